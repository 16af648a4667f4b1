//! The demo's simulated phones (being written).

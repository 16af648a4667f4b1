//! The demo's PBX stand-in (being written).

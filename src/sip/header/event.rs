//! `Event` and `Subscription-State` (RFC 6665 §8.2).

use crate::sip::grammar::{all_of, delta_seconds, generic_params, token};
use crate::sip::params::Params;

/// An Event value: package (with templates, e.g. `dialog`, `presence.winfo`) and params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    package: &'a [u8],
    params: Params<'a>,
}

impl<'a> Event<'a> {
    /// Parses an Event value.
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        all_of(value, |i| {
            let (i, package) = token(i)?;
            let (i, params) = generic_params(i)?;
            Ok((
                i,
                Event {
                    package,
                    params: Params::new(params),
                },
            ))
        })
    }
    /// The event package, e.g. `dialog`, `presence`, `as-feature-event`.
    pub fn package(&self) -> &'a [u8] {
        self.package
    }
    /// The `id` parameter, which tells subscriptions in one dialog apart.
    pub fn id(&self) -> Option<&'a [u8]> {
        self.params.value("id")
    }
    /// All parameters.
    pub fn params(&self) -> Params<'a> {
        self.params
    }
}

/// A Subscription-State value: `active`, `pending`, `terminated` or an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionState<'a> {
    state: &'a [u8],
    params: Params<'a>,
}

impl<'a> SubscriptionState<'a> {
    /// Parses a Subscription-State value.
    pub fn parse(value: &'a [u8]) -> Result<Self, usize> {
        all_of(value, |i| {
            let (i, state) = token(i)?;
            let (i, params) = generic_params(i)?;
            Ok((
                i,
                SubscriptionState {
                    state,
                    params: Params::new(params),
                },
            ))
        })
    }
    /// The state token as written.
    pub fn state(&self) -> &'a [u8] {
        self.state
    }
    /// All parameters.
    pub fn params(&self) -> Params<'a> {
        self.params
    }
    /// Whether the state is `terminated`.
    pub fn is_terminated(&self) -> bool {
        self.state.eq_ignore_ascii_case(b"terminated")
    }
    /// The `expires` parameter in seconds.
    pub fn expires(&self) -> Option<u32> {
        self.params
            .value("expires")
            .and_then(|v| delta_seconds(v).ok().map(|(_, n)| n))
    }
    /// The `reason` parameter (`deactivated`, `timeout`, `noresource`, ...).
    pub fn reason(&self) -> Option<&'a [u8]> {
        self.params.value("reason")
    }
    /// The `retry-after` parameter in seconds.
    pub fn retry_after(&self) -> Option<u32> {
        self.params
            .value("retry-after")
            .and_then(|v| delta_seconds(v).ok().map(|(_, n)| n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_with_id() {
        let e = Event::parse(b"dialog;id=17").unwrap();
        assert_eq!(e.package(), b"dialog");
        assert_eq!(e.id(), Some(&b"17"[..]));
        assert!(Event::parse(b"").is_err());
    }

    #[test]
    fn subscription_state_params() {
        let s = SubscriptionState::parse(b"terminated;reason=timeout;retry-after=30").unwrap();
        assert!(s.is_terminated());
        assert_eq!(s.reason(), Some(&b"timeout"[..]));
        assert_eq!(s.retry_after(), Some(30));
        let s = SubscriptionState::parse(b"active ; expires=3600").unwrap();
        assert_eq!(s.expires(), Some(3600));
    }
}

//! The sync engine's decisions (`SyncCore`, sans-IO): what is written to Teams when,
//! coalescing, backoff, keep-alive, restart recovery, and the loop-free Teams-busy
//! verdict. Time is passed in; nothing here sleeps.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use presence_proxy::graph::{Activity, Availability, PreferredPresence, SessionPresence};
use presence_proxy::observe::{CallPhase, Extension, ObserveEvent};
use presence_proxy::sync::{
    CallEnd, DndMode, Link, Output, PreferredTarget, SessionTarget, SyncCore, SyncRules,
    TeamsState, Write, WriteOutcome, WriteRequest,
};

const USER: &str = "00000000-0000-0000-0000-0000000000a1";

fn ext() -> Extension {
    "201".into()
}

fn linked() -> Link {
    Link {
        user_id: Some(USER.into()),
        write_enabled: true,
        can_write: true,
        read_enabled: true,
        token_generation: 1,
    }
}

struct Harness {
    core: SyncCore,
    now: Instant,
}

impl Harness {
    fn new(rules: SyncRules) -> Self {
        let mut h = Self {
            core: SyncCore::new(rules),
            now: Instant::now(),
        };
        h.core.set_link(h.now, &ext(), linked());
        h.drain();
        h
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    fn event(&mut self, event: ObserveEvent) {
        self.core.phone_event(self.now, &event);
    }

    fn call(&mut self, phase: CallPhase) {
        self.event(ObserveEvent::ExternalCallStarted { ext: ext(), phase });
    }

    fn hang_up(&mut self) {
        self.event(ObserveEvent::ExternalCallEnded { ext: ext() });
    }

    fn dnd(&mut self, on: bool) {
        self.event(ObserveEvent::DndChanged { ext: ext(), on });
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn writes(&mut self) -> Vec<WriteRequest> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::Write(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// Lets the coalescing window pass and returns the one write it makes.
    fn settle_one(&mut self) -> WriteRequest {
        self.advance(Duration::from_millis(30));
        let mut writes = self.writes();
        assert_eq!(writes.len(), 1, "{writes:?}");
        writes.remove(0)
    }

    fn done(&mut self, write: &WriteRequest, outcome: WriteOutcome) {
        self.core.write_done(self.now, &ext(), write.id, outcome);
    }

    fn teams(&mut self, requested_at: Instant, availability: Availability, activity: Activity) {
        self.core
            .teams_presence(self.now, requested_at, USER, &availability, &activity);
    }

    fn busy_changes(&mut self) -> Vec<bool> {
        self.drain()
            .into_iter()
            .filter_map(|o| match o {
                Output::TeamsBusy { busy, .. } => Some(busy),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_call_that_rings_and_is_answered_inside_the_window_makes_one_request() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    h.advance(Duration::from_millis(10));
    h.call(CallPhase::Connected);
    assert!(h.writes().is_empty(), "nothing before the window closes");
    let write = h.settle_one();
    assert_eq!(write.write, Write::SetSession(SessionPresence::InACall));
    assert_eq!(write.user_id, USER);
    h.done(&write, WriteOutcome::Done);
    assert!(h.writes().is_empty());
    assert!(h.core.converged());
    h.hang_up();
    assert_eq!(h.settle_one().write, Write::ClearSession);
}

#[test]
fn a_call_that_ends_while_its_write_is_in_flight_ends_cleared() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    let set = h.settle_one();
    h.hang_up();
    h.advance(Duration::from_millis(50));
    assert!(h.writes().is_empty(), "one write in flight per extension");
    h.done(&set, WriteOutcome::Done);
    // the settle window has passed already: the clear goes at once
    let clear = h.writes();
    assert_eq!(clear.len(), 1);
    assert_eq!(clear[0].write, Write::ClearSession);
    h.done(&clear[0], WriteOutcome::Done);
    assert!(h.core.converged());
}

#[test]
fn a_call_shorter_than_the_window_writes_nothing() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    h.advance(Duration::from_millis(5));
    h.hang_up();
    h.advance(Duration::from_secs(1));
    assert!(h.writes().is_empty());
}

#[test]
fn dnd_as_a_session_and_as_preferred_presence_is_undone_exactly() {
    let mut h = Harness::new(SyncRules::default());
    h.dnd(true);
    let set = h.settle_one();
    assert_eq!(set.write, Write::SetSession(SessionPresence::Presenting));
    h.done(&set, WriteOutcome::Done);
    h.dnd(false);
    assert_eq!(h.settle_one().write, Write::ClearSession);

    let mut h = Harness::new(SyncRules {
        dnd_mode: DndMode::Preferred,
        ..SyncRules::default()
    });
    h.dnd(true);
    let set = h.settle_one();
    assert_eq!(
        set.write,
        Write::SetPreferred(PreferredPresence::DoNotDisturb)
    );
    h.done(&set, WriteOutcome::Done);
    h.dnd(false);
    assert_eq!(h.settle_one().write, Write::ClearPreferred);

    let mut h = Harness::new(SyncRules {
        dnd_mode: DndMode::Off,
        ..SyncRules::default()
    });
    h.dnd(true);
    h.advance(Duration::from_secs(1));
    assert!(h.writes().is_empty());
}

#[test]
fn available_after_a_call_when_configured() {
    let mut h = Harness::new(SyncRules {
        call_end: CallEnd::Available,
        ..SyncRules::default()
    });
    h.call(CallPhase::Connected);
    let set = h.settle_one();
    h.done(&set, WriteOutcome::Done);
    h.hang_up();
    let after = h.settle_one();
    assert_eq!(after.write, Write::SetSession(SessionPresence::Available));
    h.done(&after, WriteOutcome::Done);
    // no keep-alive for Available: it fades by itself
    h.advance(Duration::from_secs(4 * 3600));
    assert!(h.writes().is_empty());
}

#[test]
fn failures_back_off_and_the_final_state_wins_after_recovery() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    let first = h.settle_one();
    h.done(&first, WriteOutcome::Retry("503".into()));
    h.advance(Duration::from_millis(900));
    assert!(h.writes().is_empty(), "waits the first backoff (1 s)");
    h.advance(Duration::from_millis(200));
    let second = h.writes();
    assert_eq!(second.len(), 1);
    h.done(&second[0], WriteOutcome::Retry("503".into()));
    // the call ends during the outage
    h.hang_up();
    h.advance(Duration::from_millis(1500));
    assert!(h.writes().is_empty(), "second backoff is 2 s");
    h.advance(Duration::from_millis(600));
    let third = h.writes();
    assert_eq!(third.len(), 1);
    assert_eq!(
        third[0].write,
        Write::ClearSession,
        "after an outage the final state is written, not the history"
    );
    h.done(&third[0], WriteOutcome::Done);
    assert!(h.core.converged());
}

#[test]
fn a_blocked_extension_waits_for_its_link_to_change() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    let write = h.settle_one();
    h.done(&write, WriteOutcome::Blocked("needs re-pairing".into()));
    assert_eq!(h.core.blocked("201"), Some("needs re-pairing"));
    h.advance(Duration::from_secs(3600));
    assert!(h.writes().is_empty(), "not retried forever");
    // paired again: a new token generation
    let link = Link {
        token_generation: 2,
        ..linked()
    };
    h.core.set_link(h.now, &ext(), link);
    let again = h.settle_one();
    assert_eq!(again.write, Write::SetSession(SessionPresence::InACall));
}

#[test]
fn a_held_session_is_kept_alive_before_it_expires() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Connected);
    let set = h.settle_one();
    h.done(&set, WriteOutcome::Done);
    h.advance(Duration::from_secs(44 * 60));
    assert!(h.writes().is_empty());
    h.advance(Duration::from_secs(60));
    let keep = h.writes();
    assert_eq!(keep.len(), 1, "set again at 3/4 of the 1 h expiration");
    assert_eq!(keep[0].write, Write::SetSession(SessionPresence::InACall));
    h.done(&keep[0], WriteOutcome::Done);
    h.advance(Duration::from_secs(45 * 60));
    assert_eq!(h.writes().len(), 1, "and again");
}

#[test]
fn nothing_is_written_without_the_switch_a_token_or_a_user() {
    for link in [
        Link {
            write_enabled: false,
            ..linked()
        },
        Link {
            can_write: false,
            ..linked()
        },
        Link {
            user_id: None,
            ..linked()
        },
    ] {
        let mut h = Harness::new(SyncRules::default());
        h.core.set_link(h.now, &ext(), link.clone());
        h.call(CallPhase::Connected);
        h.dnd(true);
        h.advance(Duration::from_secs(5));
        assert!(h.writes().is_empty(), "{link:?}");
    }
}

#[test]
fn switching_pbx_to_teams_off_undoes_what_was_set() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Connected);
    let set = h.settle_one();
    h.done(&set, WriteOutcome::Done);
    h.core.set_link(
        h.now,
        &ext(),
        Link {
            write_enabled: false,
            ..linked()
        },
    );
    assert_eq!(h.settle_one().write, Write::ClearSession);
}

#[test]
fn a_restart_clears_what_the_previous_run_left() {
    let mut core = SyncCore::new(SyncRules::default());
    let now = Instant::now();
    let left = TeamsState {
        user_id: Some(USER.into()),
        session: SessionTarget::InCall,
        preferred: PreferredTarget::Dnd,
    };
    core.restore(now, &ext(), &left);
    core.set_link(now, &ext(), linked());
    let later = now + Duration::from_millis(30);
    core.handle_timeout(later);
    let first: Vec<WriteRequest> = std::iter::from_fn(|| core.poll_output())
        .filter_map(|o| match o {
            Output::Write(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(
        first.iter().map(|w| w.write).collect::<Vec<_>>(),
        [Write::ClearSession]
    );
    core.write_done(later, &ext(), first[0].id, WriteOutcome::Done);
    let next: Vec<Write> = std::iter::from_fn(|| core.poll_output())
        .filter_map(|o| match o {
            Output::Write(w) => Some(w.write),
            _ => None,
        })
        .collect();
    assert_eq!(next, [Write::ClearPreferred]);
}

#[test]
fn the_users_own_teams_call_makes_the_extension_busy_and_back() {
    let mut h = Harness::new(SyncRules::default());
    h.teams(h.now, Availability::Busy, Activity::InACall);
    assert_eq!(h.busy_changes(), [true]);
    assert!(h.core.teams_busy("201"));
    h.teams(h.now, Availability::Busy, Activity::InACall);
    assert!(h.busy_changes().is_empty(), "edges only");
    h.teams(h.now, Availability::Available, Activity::Available);
    assert_eq!(h.busy_changes(), [false]);
    for idle in [
        Availability::Away,
        Availability::BeRightBack,
        Availability::Offline,
    ] {
        h.teams(h.now, idle, Activity::Away);
        assert!(h.busy_changes().is_empty());
    }
    h.teams(h.now, Availability::DoNotDisturb, Activity::DoNotDisturb);
    assert_eq!(h.busy_changes(), [true]);
}

#[test]
fn the_proxys_own_session_never_makes_the_extension_busy() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Ringing);
    let set = h.settle_one();
    // read while the setPresence is in flight, and after
    h.teams(h.now, Availability::Busy, Activity::InACall);
    h.done(&set, WriteOutcome::Done);
    h.teams(h.now, Availability::Busy, Activity::InACall);
    assert!(h.busy_changes().is_empty());
    h.hang_up();
    let clear = h.settle_one();
    h.teams(h.now, Availability::Busy, Activity::InACall);
    h.done(&clear, WriteOutcome::Done);
    let cleared_at = h.now;
    // a poll sent before the clear landed still shows the session: an echo
    h.advance(Duration::from_secs(2));
    h.teams(cleared_at, Availability::Busy, Activity::InACall);
    assert!(h.busy_changes().is_empty());
    // the user's own DND during the proxy's session is not an echo
    h.teams(h.now, Availability::DoNotDisturb, Activity::DoNotDisturb);
    assert_eq!(h.busy_changes(), [true]);
    h.teams(h.now, Availability::Available, Activity::Available);
    assert_eq!(h.busy_changes(), [false]);
    // long after the clear, Busy/InACall is the user's own Teams call
    h.advance(Duration::from_secs(30));
    h.teams(h.now, Availability::Busy, Activity::InACall);
    assert_eq!(h.busy_changes(), [true]);
}

#[test]
fn the_proxys_dnd_never_makes_the_extension_busy() {
    for (mode, seen) in [
        (
            DndMode::Session,
            (Availability::DoNotDisturb, Activity::Presenting),
        ),
        (
            DndMode::Preferred,
            (Availability::DoNotDisturb, Activity::DoNotDisturb),
        ),
    ] {
        let mut h = Harness::new(SyncRules {
            dnd_mode: mode,
            ..SyncRules::default()
        });
        h.dnd(true);
        let set = h.settle_one();
        h.done(&set, WriteOutcome::Done);
        h.teams(h.now, seen.0.clone(), seen.1.clone());
        assert!(h.busy_changes().is_empty(), "{mode:?}");
    }
}

#[test]
fn a_failed_write_may_have_landed_so_its_echo_is_still_recognised() {
    let mut h = Harness::new(SyncRules::default());
    h.call(CallPhase::Connected);
    let set = h.settle_one();
    h.done(&set, WriteOutcome::Retry("timeout".into()));
    h.teams(h.now, Availability::Busy, Activity::InACall);
    assert!(h.busy_changes().is_empty());
}

#[test]
fn unlinked_extensions_leave_no_state_behind() {
    let mut core = SyncCore::new(SyncRules::default());
    let now = Instant::now();
    for n in 0..1000 {
        let ext: Extension = format!("9{n:04}").into();
        core.phone_event(
            now,
            &ObserveEvent::ExternalCallStarted {
                ext: ext.clone(),
                phase: CallPhase::Ringing,
            },
        );
        core.phone_event(now, &ObserveEvent::ExternalCallEnded { ext });
    }
    core.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(core.extension_count(), 0);
    assert!(std::iter::from_fn(|| core.poll_output()).all(|o| !matches!(o, Output::Write(_))));
}

#[test]
fn reading_is_switched_off_with_the_link() {
    let mut h = Harness::new(SyncRules::default());
    h.teams(h.now, Availability::Busy, Activity::InAMeeting);
    assert_eq!(h.busy_changes(), [true]);
    h.core.set_link(
        h.now,
        &ext(),
        Link {
            read_enabled: false,
            ..linked()
        },
    );
    assert_eq!(h.busy_changes(), [false]);
    assert!(h.core.watched_users().is_empty());
}

#[test]
fn what_is_about_to_be_written_is_persisted_first_and_only_then() {
    let mut h = Harness::new(SyncRules::default());
    // a burst of phone events inside the window: nothing to persist yet
    for _ in 0..10 {
        h.call(CallPhase::Ringing);
        h.hang_up();
    }
    h.call(CallPhase::Connected);
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(30));
    let outputs = h.drain();
    let kinds: Vec<&str> = outputs
        .iter()
        .map(|o| match o {
            Output::Desired { .. } => "desired",
            Output::Write(_) => "write",
            Output::Confirmed { .. } => "confirmed",
            Output::TeamsBusy { .. } => "busy",
        })
        .collect();
    assert_eq!(kinds, ["desired", "write"]);
    let Output::Desired { state, .. } = &outputs[0] else {
        unreachable!()
    };
    assert_eq!(
        state,
        &TeamsState {
            user_id: Some(USER.into()),
            session: SessionTarget::InCall,
            preferred: PreferredTarget::Clear,
        }
    );
    let Output::Write(write) = &outputs[1] else {
        unreachable!()
    };
    h.done(write, WriteOutcome::Done);
    assert!(matches!(
        h.drain().as_slice(),
        [Output::Confirmed { state, .. }] if state.session == SessionTarget::InCall
    ));
}

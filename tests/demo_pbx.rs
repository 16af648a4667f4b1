//! The demo's PBX stand-in and simulated phones with the real proxy between them, on
//! loopback: phones 201, 202 and 203 register through the proxy, 203 watches 201 and
//! 202 (BLF, `Event: dialog`), and calls, star codes and Teams-busy show on the lamps.
//!
//! Every port is chosen by the system. Nothing sleeps for a fixed time: each step waits
//! for the snapshot it expects (the phones and the stand-in publish every change) or
//! for the proxy's event, with a deadline.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use e2e_support::{Proxy, start_proxy};
use presence_proxy::demo::pbx::{PbxCallKind, PbxCallState, PbxHandle, PbxOptions, PbxStandIn};
use presence_proxy::demo::phones::{
    CallDirection, CallView, Lamp, Phone, PhoneHandle, PhoneOptions, PhoneSnapshot,
};
use presence_proxy::observe::ObserveEvent;
use tokio::sync::broadcast;

/// How long any one step may take.
const WAIT: Duration = Duration::from_secs(10);

/// How long a called phone rings before it answers.
const RING: Duration = Duration::from_millis(500);

struct World {
    proxy: Proxy,
    pbx: PbxHandle,
    phones: BTreeMap<&'static str, PhoneHandle>,
    events: broadcast::Receiver<ObserveEvent>,
}

impl World {
    async fn start() -> World {
        World::start_with(|_| {}).await
    }

    /// A world whose phones' options are changed by `configure`.
    async fn start_with(configure: impl Fn(&mut PhoneOptions)) -> World {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let pbx = PbxStandIn::start(
            any,
            PbxOptions {
                ring_time: Duration::from_millis(300),
                feature_code_hangup: Duration::from_millis(200),
                ..PbxOptions::default()
            },
        )
        .await
        .unwrap();
        let proxy = start_proxy(pbx.local_addr().port(), None).await;
        let events = proxy.phone_events();
        let mut phones = BTreeMap::new();
        for ext in ["201", "202", "203"] {
            let mut options = PhoneOptions::new(proxy.udp);
            options.ring_time = RING;
            configure(&mut options);
            let phone = Phone::start(ext, options).await.unwrap();
            phones.insert(ext, phone);
        }
        let world = World {
            proxy,
            pbx,
            phones,
            events,
        };
        for ext in ["201", "202", "203"] {
            world.until(ext, "registered", |s| s.registered).await;
        }
        world
            .pbx
            .wait_for(WAIT, |s| s.registrations.len() == 3)
            .await
            .unwrap();
        world
    }

    fn phone(&self, ext: &str) -> &PhoneHandle {
        &self.phones[ext]
    }

    /// Waits until phone `ext` shows what `condition` wants.
    async fn until(
        &self,
        ext: &str,
        what: &str,
        condition: impl FnMut(&PhoneSnapshot) -> bool,
    ) -> PhoneSnapshot {
        let phone = self.phone(ext);
        match phone.wait_for(WAIT, condition).await {
            Ok(snapshot) => snapshot,
            Err(e) => panic!(
                "{ext}: {what}: {e}; phone shows {:?}; PBX holds {:?}",
                phone.snapshot(),
                self.pbx.snapshot()
            ),
        }
    }

    /// Waits until 203 shows `lamps` for 201 and 202.
    async fn lamps(&self, what: &str, lamp_201: Lamp, lamp_202: Lamp) {
        self.until("203", what, |s| {
            s.lamps.get("201") == Some(&lamp_201) && s.lamps.get("202") == Some(&lamp_202)
        })
        .await;
    }

    /// Waits for the proxy to observe `wanted` (events about other things skipped).
    async fn observed(&mut self, wanted: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) if event.to_string() == wanted => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("proxy events: {e}"),
                Err(_) => panic!("the proxy never observed {wanted}"),
            }
        }
    }

    async fn stop(self) {
        for phone in self.phones.values() {
            phone.shutdown().await;
        }
        // the phones unregistered on their way out
        self.pbx
            .wait_for(WAIT, |s| s.registrations.is_empty())
            .await
            .unwrap();
        self.pbx.shutdown().await;
        self.proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pbx_learns_the_proxy_aliases_and_reaches_phones_through_them() {
    let world = World::start().await;
    let proxy = world.proxy.udp;
    for (ext, contacts) in world.pbx.snapshot().registrations {
        assert_eq!(contacts.len(), 1, "{ext}: {contacts:?}");
        let contact = &contacts[0];
        assert!(
            contact.starts_with(&format!("sip:{ext}@{proxy};")) && contact.contains(";ppa="),
            "{ext} registered {contact}, not an alias at the proxy {proxy}"
        );
        // the phone itself never sees the alias: its registration is its own
        assert!(world.phone(&ext).snapshot().registered);
    }
    // the stand-in calls 202 at the alias; the proxy finds the phone
    world.phone("201").dial("202").await.unwrap();
    world
        .until("202", "the PBX's INVITE arrives", |s| {
            s.call
                == CallView::Ringing {
                    peer: "201".into(),
                    direction: CallDirection::Incoming,
                }
        })
        .await;
    world
        .until("201", "connected", |s| {
            matches!(s.call, CallView::Connected { .. })
        })
        .await;
    // the stand-in's BYE to 201 follows the Record-Route through the proxy
    world.phone("202").hang_up().await.unwrap();
    world
        .until("201", "the BYE from the PBX arrives", |s| {
            s.call == CallView::Idle
        })
        .await;
    world
        .pbx
        .wait_for(WAIT, |s| s.calls.is_empty())
        .await
        .unwrap();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamps_follow_an_internal_call_ringing_busy_idle() {
    let world = World::start().await;
    world.phone("203").watch(&["201", "202"]).await.unwrap();
    world.lamps("both idle", Lamp::Idle, Lamp::Idle).await;
    world
        .pbx
        .wait_for(WAIT, |s| s.subscriptions == 2)
        .await
        .unwrap();

    world.phone("201").dial("202").await.unwrap();
    world
        .lamps("both ringing", Lamp::Ringing, Lamp::Ringing)
        .await;
    let calls = world.pbx.snapshot().calls;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].caller.as_str(), calls[0].callee.as_str()),
        ("201", "202")
    );
    assert_eq!(calls[0].kind, PbxCallKind::Internal);

    // 202 answers after its ring time
    world.lamps("both busy", Lamp::Busy, Lamp::Busy).await;
    world
        .until("201", "connected", |s| {
            s.call
                == CallView::Connected {
                    peer: "202".into(),
                    direction: CallDirection::Outgoing,
                }
        })
        .await;
    world
        .until("202", "connected", |s| {
            s.call
                == CallView::Connected {
                    peer: "201".into(),
                    direction: CallDirection::Incoming,
                }
        })
        .await;
    assert_eq!(world.pbx.snapshot().calls[0].state, PbxCallState::Connected);

    world.phone("201").hang_up().await.unwrap();
    world.lamps("both idle again", Lamp::Idle, Lamp::Idle).await;
    world
        .until("202", "the BYE was bridged", |s| s.call == CallView::Idle)
        .await;
    assert!(world.phone("203").snapshot().last_notify_at.is_some());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_call_connects_and_is_observed() {
    let mut world = World::start().await;
    world.phone("203").watch(&["201", "202"]).await.unwrap();
    world.lamps("both idle", Lamp::Idle, Lamp::Idle).await;

    world.phone("201").dial("+4930123456").await.unwrap();
    world.observed("ExternalCallStarted 201 ringing").await;
    world
        .until("201", "connected", |s| {
            s.call
                == CallView::Connected {
                    peer: "+4930123456".into(),
                    direction: CallDirection::Outgoing,
                }
        })
        .await;
    world.observed("ExternalCallStarted 201 connected").await;
    world.lamps("201 busy", Lamp::Busy, Lamp::Idle).await;
    assert_eq!(world.pbx.snapshot().calls[0].kind, PbxCallKind::External);

    world.phone("201").hang_up().await.unwrap();
    world.observed("ExternalCallEnded 201").await;
    world.lamps("201 idle", Lamp::Idle, Lamp::Idle).await;
    assert_eq!(world.phone("201").snapshot().last_final_status, Some(200));
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_78_makes_the_pbx_refuse_calls_with_486_and_star_79_undoes_it() {
    let mut world = World::start().await;
    world.phone("202").dial("*78").await.unwrap();
    // the PBX answers (the proxy sees DND on from the 2xx), then hangs up itself
    world.observed("DndChanged 202 on").await;
    world
        .until("202", "the PBX hung up", |s| {
            s.call == CallView::Idle && s.last_final_status == Some(200)
        })
        .await;
    world
        .pbx
        .wait_for(WAIT, |s| s.dnd.contains("202") && s.calls.is_empty())
        .await
        .unwrap();

    world.phone("201").dial("202").await.unwrap();
    world
        .until("201", "refused", |s| {
            s.call == CallView::Idle && s.last_final_status == Some(486)
        })
        .await;
    assert_eq!(world.phone("202").snapshot().call, CallView::Idle);

    world.phone("202").dial("*79").await.unwrap();
    world.observed("DndChanged 202 off").await;
    world
        .pbx
        .wait_for(WAIT, |s| s.dnd.is_empty() && s.calls.is_empty())
        .await
        .unwrap();
    world.phone("201").dial("202").await.unwrap();
    world
        .until("201", "connected once DND is off", |s| {
            matches!(s.call, CallView::Connected { .. })
        })
        .await;
    world.phone("201").hang_up().await.unwrap();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_busy_user_shows_busy_on_the_lamp_and_refuses_calls() {
    let world = World::start().await;
    world.phone("203").watch(&["201", "202"]).await.unwrap();
    world.lamps("both idle", Lamp::Idle, Lamp::Idle).await;

    // the proxy injects a confirmed `teams-202` dialog into 203's subscription
    assert!(
        world
            .proxy
            .control()
            .set_teams_busy("202".into(), true)
            .await
    );
    world
        .lamps("202 busy from Teams", Lamp::Idle, Lamp::Busy)
        .await;
    assert!(
        world.pbx.snapshot().calls.is_empty(),
        "the PBX knows nothing of it"
    );
    // calls to 202 are refused by the proxy; 202 never rings
    world.phone("201").dial("202").await.unwrap();
    world
        .until("201", "refused", |s| {
            s.call == CallView::Idle && s.last_final_status == Some(486)
        })
        .await;
    assert_eq!(world.phone("202").snapshot().call, CallView::Idle);

    assert!(
        world
            .proxy
            .control()
            .set_teams_busy("202".into(), false)
            .await
    );
    world.lamps("202 idle again", Lamp::Idle, Lamp::Idle).await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatching_ends_the_subscription_at_the_pbx() {
    let world = World::start().await;
    world.phone("203").watch(&["201", "202"]).await.unwrap();
    world.lamps("both idle", Lamp::Idle, Lamp::Idle).await;
    world.phone("203").unwatch(&["201"]).await.unwrap();
    world
        .pbx
        .wait_for(WAIT, |s| s.subscriptions == 1)
        .await
        .unwrap();
    world
        .until("203", "one lamp left", |s| {
            s.lamps.len() == 1 && s.lamps.get("202") == Some(&Lamp::Idle)
        })
        .await;
    // unregistering removes the binding
    world.phone("201").shutdown().await;
    world
        .pbx
        .wait_for(WAIT, |s| !s.registrations.contains_key("201"))
        .await
        .unwrap();
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reject_and_answer_cross_the_proxy_both_ways() {
    let world = World::start_with(|options| options.auto_answer = false).await;
    world.phone("203").watch(&["201", "202"]).await.unwrap();
    world.lamps("both idle", Lamp::Idle, Lamp::Idle).await;
    let ringing = |s: &PhoneSnapshot| {
        s.call
            == CallView::Ringing {
                peer: "201".into(),
                direction: CallDirection::Incoming,
            }
    };

    // the caller gives up: its CANCEL reaches the PBX, the PBX's reaches 202
    world.phone("201").dial("202").await.unwrap();
    world.until("202", "ringing", ringing).await;
    world
        .lamps("both ringing", Lamp::Ringing, Lamp::Ringing)
        .await;
    world.phone("201").hang_up().await.unwrap();
    world
        .until("202", "cancelled", |s| s.call == CallView::Idle)
        .await;
    world
        .until("201", "487", |s| s.last_final_status == Some(487))
        .await;
    world.lamps("both idle again", Lamp::Idle, Lamp::Idle).await;

    // the callee rejects: 486 goes back through the proxy and the PBX to 201
    world.phone("201").dial("202").await.unwrap();
    world.until("202", "ringing again", ringing).await;
    world.phone("202").hang_up().await.unwrap();
    world
        .until("201", "rejected", |s| {
            s.call == CallView::Idle && s.last_final_status == Some(486)
        })
        .await;

    // the callee answers by hand
    world.phone("201").dial("202").await.unwrap();
    world.until("202", "ringing a third time", ringing).await;
    world.phone("202").answer().await.unwrap();
    world
        .until("201", "answered", |s| {
            matches!(s.call, CallView::Connected { .. })
        })
        .await;
    world.lamps("both busy", Lamp::Busy, Lamp::Busy).await;
    world.phone("202").hang_up().await.unwrap();
    world.lamps("idle at last", Lamp::Idle, Lamp::Idle).await;
    world
        .pbx
        .wait_for(WAIT, |s| s.calls.is_empty())
        .await
        .unwrap();
    world.stop().await;
}

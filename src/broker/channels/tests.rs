use super::*;

fn text(value: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(value.to_owned()).unwrap())
}

fn ready(received: Received) -> Vec<(String, String)> {
    match received {
        Received::Ready(taken) => {
            taken.into_iter().map(|t| (t.channel.to_string(), t.message.get().to_owned())).collect()
        }
        Received::Waiting { .. } => panic!("expected messages, the receive waits"),
    }
}

fn limit(max: usize) -> ReceiveLimit {
    ReceiveLimit { max, max_bytes: usize::MAX }
}

fn status(channels: &Channels, key: &str) -> u64 {
    channels.status()[key].as_u64().unwrap()
}

#[test]
fn a_channel_keeps_messages_in_order_until_received_and_refuses_past_its_capacity() {
    let mut channels = Channels::new(usize::MAX);
    for n in 0..3 {
        channels.send("asgi", "c", text(&n.to_string()), 60.0, 3, 0.0).unwrap();
    }
    let error = channels.send("asgi", "c", text("3"), 60.0, 3, 0.0).unwrap_err();
    assert_eq!(error.code, ErrorCode::ChannelFull);
    assert!(error.message.contains("capacity of 3"), "{}", error.message);
    let got = ready(channels.receive("asgi", "c", limit(2), false, 0.0).unwrap());
    assert_eq!(got, vec![("c".into(), "0".into()), ("c".into(), "1".into())]);
    assert_eq!(ready(channels.receive("asgi", "c", limit(10), false, 0.0).unwrap()).len(), 1);
    assert_eq!(status(&channels, "channels"), 0, "an empty channel nobody waits on goes");
    assert_eq!((status(&channels, "bytes"), status(&channels, "refused_full")), (0, 1));
}

#[test]
fn process_specific_channels_share_their_process_queue_and_say_where_each_went() {
    let mut channels = Channels::new(usize::MAX);
    channels.send("asgi", "p.abc!one", text("1"), 60.0, 2, 0.0).unwrap();
    channels.send("asgi", "p.abc!two", text("2"), 60.0, 2, 0.0).unwrap();
    assert!(channels.send("asgi", "p.abc!three", text("3"), 60.0, 2, 0.0).is_err());
    let got = ready(channels.receive("asgi", "p.abc!", limit(10), false, 0.0).unwrap());
    assert_eq!(got, vec![("p.abc!one".into(), "1".into()), ("p.abc!two".into(), "2".into())]);
}

#[test]
fn expired_messages_are_never_received_and_their_memory_goes() {
    let mut channels = Channels::new(usize::MAX);
    channels.send("asgi", "c", text("10"), 3.0, 10, 0.0).unwrap();
    channels.send("asgi", "c", text("11"), 3.0, 10, 2.0).unwrap();
    assert_eq!(
        ready(channels.receive("asgi", "c", limit(10), false, 4.0).unwrap()),
        vec![("c".into(), "11".into())]
    );
    channels.send("asgi", "c", text("12"), 1.0, 10, 10.0).unwrap();
    channels.tick(20.0);
    assert_eq!((status(&channels, "expired"), status(&channels, "bytes")), (2, 0));
    assert_eq!(status(&channels, "channels"), 0);
}

#[tokio::test]
async fn a_waiting_receiver_is_handed_the_next_message_and_one_gone_passes_it_on() {
    let mut channels = Channels::new(usize::MAX);
    let Received::Waiting { rx: gone, .. } = channels.receive("asgi", "c", limit(1), true, 0.0).unwrap()
    else {
        panic!("nothing there yet");
    };
    let Received::Waiting { rx: waiting, .. } = channels.receive("asgi", "c", limit(1), true, 0.0).unwrap()
    else {
        panic!("nothing there yet");
    };
    drop(gone);
    channels.send("asgi", "c", text("1"), 60.0, 10, 0.0).unwrap();
    let taken = waiting.await.unwrap();
    assert_eq!(taken[0].message.get(), "1");
    assert_eq!(status(&channels, "channels"), 0);
}

#[test]
fn what_a_receiver_could_not_pass_on_goes_back_to_the_front_in_order() {
    let mut channels = Channels::new(usize::MAX);
    let Received::Waiting { id, mut rx } = channels.receive("asgi", "c", limit(1), true, 0.0).unwrap() else {
        panic!("nothing there yet");
    };
    channels.send("asgi", "c", text("1"), 60.0, 10, 0.0).unwrap();
    channels.send("asgi", "c", text("2"), 60.0, 10, 0.0).unwrap();
    // The receiver's connection ended before it was answered.
    rx.close();
    let handed = rx.try_recv().unwrap();
    channels.forget_waiter("asgi", "c", id, handed, 0.0);
    let got = ready(channels.receive("asgi", "c", limit(10), false, 0.0).unwrap());
    assert_eq!(got, vec![("c".into(), "1".into()), ("c".into(), "2".into())]);
    assert_eq!((status(&channels, "received"), status(&channels, "returned")), (2, 1));
}

#[test]
fn group_send_reaches_every_live_member_and_skips_full_ones() {
    let mut channels = Channels::new(usize::MAX);
    assert_eq!(channels.group_add("asgi", "g", "a", 100.0, 10, 0.0).unwrap(), 1);
    assert_eq!(channels.group_add("asgi", "g", "b", 100.0, 1, 0.0).unwrap(), 2);
    assert_eq!(channels.group_add("asgi", "g", "old", 5.0, 10, 0.0).unwrap(), 3);
    assert_eq!(channels.group_add("asgi", "g", "a", 100.0, 10, 0.0).unwrap(), 3, "adding again renews");
    let first = channels.group_send("asgi", "g", text("1"), 60.0, 1.0);
    assert_eq!(first, GroupSent { members: 3, sent: 3, full: 0 });
    let second = channels.group_send("asgi", "g", text("2"), 60.0, 10.0);
    assert_eq!(second, GroupSent { members: 2, sent: 1, full: 1 }, "old expired; b holds its 1");
    assert_eq!(ready(channels.receive("asgi", "a", limit(10), false, 10.0).unwrap()).len(), 2);
    assert_eq!(ready(channels.receive("asgi", "b", limit(10), false, 10.0).unwrap()).len(), 1);
    assert!(channels.group_discard("asgi", "g", "b"));
    assert!(!channels.group_discard("asgi", "g", "b"));
    let third = channels.group_send("asgi", "g", text("3"), 60.0, 10.0);
    assert_eq!(third, GroupSent { members: 1, sent: 1, full: 0 });
    assert_eq!(channels.group_send("asgi", "none", text("0"), 60.0, 10.0), GroupSent::default());
    assert_eq!((status(&channels, "group_dropped_full"), status(&channels, "memberships")), (1, 1));
}

#[test]
fn flush_clears_one_prefix_only() {
    let mut channels = Channels::new(usize::MAX);
    for prefix in ["one", "two"] {
        channels.send(prefix, "c", text("1"), 60.0, 10, 0.0).unwrap();
        channels.group_add(prefix, "g", "c", 60.0, 10, 0.0).unwrap();
    }
    assert_eq!(channels.flush("one"), (1, 1));
    assert_eq!(channels.flush("one"), (0, 0));
    assert!(ready(channels.receive("one", "c", limit(10), false, 0.0).unwrap()).is_empty());
    assert_eq!(ready(channels.receive("two", "c", limit(10), false, 0.0).unwrap()).len(), 1);
    assert_eq!(channels.group_send("two", "g", text("2"), 60.0, 0.0).sent, 1);
    assert_eq!((status(&channels, "groups"), status(&channels, "memberships")), (1, 1));
}

#[test]
fn memory_and_byte_bounds_refuse_with_their_reason() {
    let mut channels = Channels::new(10_000);
    let big = text(&format!("\"{}\"", "x".repeat(3000)));
    let refused = (0..5).filter(|_| channels.send("asgi", "c", big.clone(), 60.0, 100, 0.0).is_err()).count();
    assert_eq!(refused, 2, "three fit in 10,000 bytes");
    let error = channels.send("asgi", "d", big.clone(), 60.0, 100, 0.0).unwrap_err();
    assert!(error.message.contains("max_memory"), "{}", error.message);
    assert_eq!(status(&channels, "channels"), 1, "a refused send leaves no channel behind");
    let huge = text(&format!("\"{}\"", "x".repeat(MAX_CHANNEL_BYTES)));
    let mut roomy = Channels::new(usize::MAX);
    let error = roomy.send("asgi", "c", huge, 60.0, 100, 0.0).unwrap_err();
    assert!(error.message.contains("bytes"), "{}", error.message);
}

#[test]
fn groups_and_members_are_bounded() {
    let mut channels = Channels::new(usize::MAX);
    for n in 0..MAX_GROUP_MEMBERS {
        channels.group_add("asgi", "g", &format!("c{n}"), 60.0, 1, 0.0).unwrap();
    }
    let error = channels.group_add("asgi", "g", "one-more", 60.0, 1, 0.0).unwrap_err();
    assert_eq!(error.code, ErrorCode::ChannelFull);
    channels.group_add("asgi", "g", "c0", 60.0, 1, 0.0).expect("renewing a member is no new one");
    channels.tick(100.0);
    assert_eq!((status(&channels, "groups"), status(&channels, "memberships")), (0, 0), "all expired");
}

#[test]
fn one_receive_takes_at_most_its_bytes_but_always_one_message() {
    let mut channels = Channels::new(usize::MAX);
    let big = text(&format!("\"{}\"", "x".repeat(1000)));
    for _ in 0..5 {
        channels.send("asgi", "c", big.clone(), 60.0, 10, 0.0).unwrap();
    }
    let two = ReceiveLimit { max: 10, max_bytes: 2500 };
    assert_eq!(ready(channels.receive("asgi", "c", two, false, 0.0).unwrap()).len(), 2);
    let tiny = ReceiveLimit { max: 10, max_bytes: 10 };
    assert_eq!(ready(channels.receive("asgi", "c", tiny, false, 0.0).unwrap()).len(), 1);
}

fn leased(received: Received) -> Vec<(u64, String)> {
    match received {
        Received::Ready(taken) => taken.into_iter().map(|t| (t.tag, t.message.get().to_owned())).collect(),
        Received::Waiting { .. } => panic!("expected messages, the receive waits"),
    }
}

fn by(session: SessionId, exclude: &[&str]) -> ReceiveBy {
    ReceiveBy { lease: Some(session), exclude: Arc::new(exclude.iter().map(|&c| c.into()).collect()) }
}

#[test]
fn unacknowledged_messages_go_back_in_the_order_sent_when_their_connections_end() {
    let mut channels = Channels::new(usize::MAX);
    for n in 0..4 {
        channels.send("asgi", "c", text(&n.to_string()), 60.0, 10, 0.0).unwrap();
    }
    let first = leased(channels.receive_by(&by(1, &[]), "asgi", "c", limit(1), false, 0.0).unwrap());
    let second = leased(channels.receive_by(&by(2, &[]), "asgi", "c", limit(2), false, 0.0).unwrap());
    assert_eq!(second.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), vec!["1", "2"]);
    assert_eq!(channels.ack(2, &[second[1].0]), 1);
    assert_eq!(channels.ack(1, &[second[0].0]), 0, "a tag is its connection's");
    assert_eq!(status(&channels, "unacked"), 2);
    channels.end_lease(2, 0.0);
    channels.end_lease(1, 0.0);
    assert_eq!(first[0].1, "0");
    let got = ready(channels.receive("asgi", "c", limit(10), false, 0.0).unwrap());
    assert_eq!(got.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), vec!["0", "1", "3"]);
    assert_eq!(
        (status(&channels, "unacked"), status(&channels, "returned"), status(&channels, "acked")),
        (0, 2, 1)
    );
}

#[test]
fn a_connection_holds_a_bounded_number_unacknowledged_and_flush_drops_them() {
    let mut channels = Channels::new(usize::MAX);
    for n in 0..MAX_UNACKED + 1 {
        channels.send("asgi", &format!("p!{}", n % 7), text("1"), 60.0, MAX_CHANNEL_CAPACITY, 0.0).unwrap();
    }
    let mut held = 0;
    while held < MAX_UNACKED {
        held +=
            leased(channels.receive_by(&by(1, &[]), "asgi", "p!", limit(1000), false, 0.0).unwrap()).len();
    }
    let Err(error) = channels.receive_by(&by(1, &[]), "asgi", "p!", limit(1), false, 0.0) else {
        panic!("past its bound");
    };
    assert_eq!(error.code, ErrorCode::TooManyRequests);
    channels.flush("asgi");
    channels.end_lease(1, 0.0);
    assert_eq!((status(&channels, "unacked"), status(&channels, "messages")), (0, 0), "flushed, never back");
}

#[tokio::test]
async fn a_waiter_is_never_handed_what_it_excludes_and_a_cancelled_one_gets_nothing() {
    let mut channels = Channels::new(usize::MAX);
    let Received::Waiting { rx, .. } =
        channels.receive_by(&by(1, &["p!full"]), "asgi", "p!", limit(5), true, 0.0).unwrap()
    else {
        panic!("nothing there yet");
    };
    channels.send("asgi", "p!full", text("1"), 60.0, 10, 0.0).unwrap();
    channels.send("asgi", "p!room", text("2"), 60.0, 10, 0.0).unwrap();
    assert_eq!(rx.await.unwrap()[0].message.get(), "2");
    assert_eq!(status(&channels, "messages"), 1, "p!full stays on the broker");
    let Received::Waiting { rx, .. } =
        channels.receive_by(&by(1, &["p!full"]), "asgi", "p!", limit(5), true, 0.0).unwrap()
    else {
        panic!("only excluded messages there");
    };
    assert_eq!((channels.cancel(2, "asgi", "p!"), channels.cancel(1, "asgi", "p!")), (0, 1));
    assert!(rx.await.unwrap().is_empty());
}

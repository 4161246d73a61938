//! Read-only consumers: the topics a consumer may read (one list for the
//! embedded broker's guard and the Mosquitto access list the controller
//! writes), and the MQTT 3.1.1 filter the broker terminator applies to a
//! consumer's packets.
//!
//! Pure: bytes in, a verdict out; no I/O. A consumer may connect (without
//! a Will), subscribe, unsubscribe, acknowledge what it receives, ping and
//! disconnect. Anything else — any PUBLISH, a Will, a second CONNECT, a
//! malformed or oversized packet — closes its connection. A subscription
//! is narrowed to what the consumer may read: each filter becomes its
//! intersections with the readable filters (`verge/v1/#` becomes the
//! presence, telemetry, events, alarms and fleet event filters), and a
//! filter with none is refused (SUBACK `0x80`).

use std::collections::HashMap;

/// SUBACK's failure return code.
const SUBACK_FAILURE: u8 = 0x80;
/// Most SUBSCRIBEs of one consumer waiting for the broker's SUBACK.
const MAX_PENDING: usize = 64;

/// The filters a consumer limited to `regions` (every region when empty)
/// may read under `prefix`. An unlimited consumer also reads presence and
/// the fleet-wide `_fleet` alarms and fleet events; a limited one reads
/// neither, since presence names no region.
pub fn readable_filters(prefix: &str, regions: &[String]) -> Vec<String> {
    if regions.is_empty() {
        return vec![
            format!("{prefix}/agents/+/presence"),
            format!("{prefix}/telemetry/+/+"),
            format!("{prefix}/events/+/+"),
            format!("{prefix}/alarms/+/#"),
            format!("{prefix}/fleet/events/+"),
        ];
    }
    regions
        .iter()
        .flat_map(|r| {
            [
                format!("{prefix}/telemetry/{r}/+"),
                format!("{prefix}/events/{r}/+"),
                format!("{prefix}/alarms/{r}/#"),
                format!("{prefix}/fleet/events/{r}"),
            ]
        })
        .collect()
}

/// Whether `filter` is a well-formed MQTT topic filter.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i + 1 == levels.len(),
        "+" => true,
        other => !other.contains('+') && !other.contains('#'),
    })
}

/// The filter matching exactly the topics both `a` and `b` match, if any
/// topic does. Both must be valid filters.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    fn go<'a>(a: &[&'a str], b: &[&'a str]) -> Option<Vec<&'a str>> {
        match (a.split_first(), b.split_first()) {
            (None, None) => Some(Vec::new()),
            // `x/#` also matches `x`: `#` meets the end of the other filter.
            (Some((&"#", _)), _) => Some(b.to_vec()),
            (_, Some((&"#", _))) => Some(a.to_vec()),
            (None, Some(_)) | (Some(_), None) => None,
            (Some((x, a_rest)), Some((y, b_rest))) => {
                let level = match (*x, *y) {
                    ("+", y) => y,
                    (x, "+") => x,
                    (x, y) if x == y => x,
                    _ => return None,
                };
                let mut rest = go(a_rest, b_rest)?;
                rest.insert(0, level);
                Some(rest)
            }
        }
    }
    // Wildcards at the first level never match `$` topics.
    let dollar = |f: &str, other: &str| {
        f.starts_with('$') && (other.starts_with('+') || other.starts_with('#'))
    };
    if dollar(a, b) || dollar(b, a) {
        return None;
    }
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let levels = go(&a, &b)?;
    (!levels.is_empty()).then(|| levels.join("/"))
}

/// Why a packet could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a packet's remaining length is not a valid variable-length integer")]
    Length,
    #[error("a packet of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
}

/// The length of the first whole packet in `buf`, `None` while it is
/// incomplete. A packet declaring more than `max` bytes is an error before
/// any of its body is read.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 2 + i + remaining;
            if total > max {
                return Err(FrameError::TooLarge(total, max));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(FrameError::Length)
}

/// What to do with one packet from the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the broker unchanged.
    Forward,
    /// Pass these bytes to the broker instead.
    Replace(Vec<u8>),
    /// Answer the consumer with these bytes; the broker sees nothing.
    Answer(Vec<u8>),
    /// Close the connection, for this reason.
    Close(Refusal),
}

/// Why a consumer's connection was closed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Publish,
    Will,
    Protocol,
    Malformed,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Will => "will",
            Self::Protocol => "protocol",
            Self::Malformed => "malformed",
        }
    }
}

/// A bounded reader over a packet's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn string(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// A whole packet: fixed header `first`, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// The state of one consumer connection's guard.
#[derive(Debug)]
pub struct Guard {
    /// `consumer:<name>`: prefixes the client id, so that a consumer can
    /// never take over an agent's or the controller's session (`:` is in
    /// no agent id; rumqttd refuses `+` in client ids).
    client_prefix: String,
    readable: Vec<String>,
    connected: bool,
    /// For each SUBSCRIBE forwarded and not yet acknowledged: for each of
    /// its filters, the indices of the filters forwarded for it.
    pending: HashMap<u16, Vec<Vec<usize>>>,
}

impl Guard {
    pub fn new(client_prefix: String, readable: Vec<String>) -> Self {
        Self {
            client_prefix,
            readable,
            connected: false,
            pending: HashMap::new(),
        }
    }

    /// The readable part of `filter`: its intersections with every
    /// readable filter, without repeats.
    fn narrow(&self, filter: &str) -> Vec<String> {
        if !valid_filter(filter) {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for allowed in &self.readable {
            if let Some(i) = intersect(filter, allowed)
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }

    /// Decides about one whole packet from the consumer (as framed by
    /// [`frame`]).
    pub fn client_packet(&mut self, bytes: &[u8]) -> Verdict {
        let Some(&first) = bytes.first() else {
            return Verdict::Close(Refusal::Malformed);
        };
        let body_at = bytes.len() - frame_body_len(bytes);
        let body = bytes.get(body_at..).unwrap_or_default();
        let kind = first >> 4;
        if !self.connected && kind != 1 {
            return Verdict::Close(Refusal::Protocol);
        }
        match kind {
            1 => self.connect(first, body),
            3 => Verdict::Close(Refusal::Publish),
            // PUBACK, PUBREC, PUBREL, PUBCOMP: acknowledgements of what it
            // receives. PINGREQ, DISCONNECT.
            4..=7 | 12 | 14 => Verdict::Forward,
            8 if first == 0x82 => self
                .subscribe(body)
                .unwrap_or(Verdict::Close(Refusal::Malformed)),
            10 if first == 0xa2 => self
                .unsubscribe(body)
                .unwrap_or(Verdict::Close(Refusal::Malformed)),
            _ => Verdict::Close(Refusal::Protocol),
        }
    }

    fn connect(&mut self, first: u8, body: &[u8]) -> Verdict {
        if self.connected || first != 0x10 {
            return Verdict::Close(Refusal::Protocol);
        }
        let mut c = Cursor { bytes: body, at: 0 };
        let parsed = (|| {
            let name = c.string()?;
            let level = c.u8()?;
            let flags = c.u8()?;
            let keep_alive = c.u16()?;
            let client_id = c.string()?;
            Some((name, level, flags, keep_alive, client_id))
        })();
        let Some((name, level, flags, keep_alive, client_id)) = parsed else {
            return Verdict::Close(Refusal::Malformed);
        };
        // MQTT 3.1.1 only: the embedded broker speaks nothing else.
        if name != "MQTT" || level != 4 || flags & 0x01 != 0 {
            return Verdict::Close(Refusal::Protocol);
        }
        if flags & 0x04 != 0 {
            return Verdict::Close(Refusal::Will);
        }
        if flags & 0x38 != 0 {
            // Will QoS or retain without a Will.
            return Verdict::Close(Refusal::Malformed);
        }
        let mut out = Vec::with_capacity(body.len() + self.client_prefix.len() + 1);
        let rewritten = (|| {
            put_string(&mut out, name)?;
            out.push(level);
            out.push(flags);
            out.extend_from_slice(&keep_alive.to_be_bytes());
            put_string(&mut out, &format!("{}:{client_id}", self.client_prefix))?;
            out.extend_from_slice(c.rest());
            Some(())
        })();
        if rewritten.is_none() {
            return Verdict::Close(Refusal::Malformed);
        }
        self.connected = true;
        Verdict::Replace(packet(0x10, &out))
    }

    fn subscribe(&mut self, body: &[u8]) -> Option<Verdict> {
        let mut c = Cursor { bytes: body, at: 0 };
        let id = c.u16()?;
        let mut groups = Vec::new();
        let mut forwarded: Vec<(String, u8)> = Vec::new();
        while !c.done() {
            let filter = c.string()?;
            let qos = c.u8()?;
            if qos > 2 {
                return None;
            }
            let mut group = Vec::new();
            for narrowed in self.narrow(filter) {
                group.push(forwarded.len());
                forwarded.push((narrowed, qos));
            }
            groups.push(group);
        }
        if groups.is_empty() {
            return None;
        }
        if forwarded.is_empty() {
            let mut out = id.to_be_bytes().to_vec();
            out.extend(std::iter::repeat_n(SUBACK_FAILURE, groups.len()));
            return Some(Verdict::Answer(packet(0x90, &out)));
        }
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&id) {
            return Some(Verdict::Close(Refusal::Protocol));
        }
        let mut out = id.to_be_bytes().to_vec();
        for (filter, qos) in &forwarded {
            put_string(&mut out, filter)?;
            out.push(*qos);
        }
        self.pending.insert(id, groups);
        Some(Verdict::Replace(packet(0x82, &out)))
    }

    fn unsubscribe(&mut self, body: &[u8]) -> Option<Verdict> {
        let mut c = Cursor { bytes: body, at: 0 };
        let id = c.u16()?;
        let mut any = false;
        let mut out = id.to_be_bytes().to_vec();
        while !c.done() {
            any = true;
            for narrowed in self.narrow(c.string()?) {
                put_string(&mut out, &narrowed)?;
            }
        }
        if !any {
            return None;
        }
        if out.len() == 2 {
            return Some(Verdict::Answer(packet(0xb0, &id.to_be_bytes())));
        }
        Some(Verdict::Replace(packet(0xa2, &out)))
    }

    /// The bytes to send the consumer for one whole packet from the
    /// broker: a SUBACK for a narrowed SUBSCRIBE gets one return code per
    /// filter the consumer asked for; anything else is `None` (unchanged).
    pub fn broker_packet(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if bytes.first() != Some(&0x90) {
            return None;
        }
        let body = bytes.get(bytes.len() - frame_body_len(bytes)..)?;
        let mut c = Cursor { bytes: body, at: 0 };
        let id = c.u16()?;
        let groups = self.pending.remove(&id)?;
        let codes = c.rest();
        let mut out = id.to_be_bytes().to_vec();
        for group in groups {
            let granted = group
                .iter()
                .filter_map(|i| codes.get(*i).copied())
                .filter(|code| *code != SUBACK_FAILURE)
                .max()
                .unwrap_or(SUBACK_FAILURE);
            out.push(granted);
        }
        Some(packet(0x90, &out))
    }
}

/// The length of the body of a whole packet (as framed by [`frame`]).
fn frame_body_len(bytes: &[u8]) -> usize {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = bytes.get(1 + i) else {
            return 0;
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return remaining.min(bytes.len().saturating_sub(2 + i));
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "verge/v1";

    fn subscribe(id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        for (f, q) in filters {
            put_string(&mut body, f).expect("short");
            body.push(*q);
        }
        packet(0x82, &body)
    }

    fn connect(flags: u8, client_id: &str) -> Vec<u8> {
        let mut body = Vec::new();
        put_string(&mut body, "MQTT").expect("short");
        body.push(4);
        body.push(flags);
        body.extend_from_slice(&30u16.to_be_bytes());
        put_string(&mut body, client_id).expect("short");
        packet(0x10, &body)
    }

    fn filters_of(bytes: &[u8]) -> Vec<String> {
        let body = &bytes[bytes.len() - frame_body_len(bytes)..];
        let mut c = Cursor { bytes: body, at: 2 };
        let mut out = Vec::new();
        while !c.done() {
            out.push(c.string().expect("filter").to_owned());
            c.u8().expect("qos");
        }
        out
    }

    fn connected(regions: &[&str]) -> Guard {
        let regions: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
        let mut g = Guard::new("consumer:x".into(), readable_filters(P, &regions));
        assert!(matches!(
            g.client_packet(&connect(0x02, "dash")),
            Verdict::Replace(_)
        ));
        g
    }

    #[test]
    fn intersections() {
        assert_eq!(
            intersect("verge/v1/#", "verge/v1/telemetry/+/+").as_deref(),
            Some("verge/v1/telemetry/+/+")
        );
        assert_eq!(
            intersect("verge/v1/telemetry/eu/#", "verge/v1/telemetry/+/+").as_deref(),
            Some("verge/v1/telemetry/eu/+")
        );
        assert_eq!(
            intersect("#", "verge/v1/alarms/+/#").as_deref(),
            Some("verge/v1/alarms/+/#")
        );
        assert_eq!(
            intersect("verge/v1/agents/+/desired", "verge/v1/agents/+/presence"),
            None
        );
        assert_eq!(
            intersect("verge/v1/alarms/eu", "verge/v1/alarms/+/#").as_deref(),
            Some("verge/v1/alarms/eu")
        );
        assert_eq!(intersect("$SYS/#", "+/#"), None);
        assert_eq!(intersect("a/b", "a/b/c"), None);
    }

    #[test]
    fn everything_narrows_to_the_readable_topics_and_nothing_else() {
        let mut g = connected(&[]);
        let Verdict::Replace(sub) = g.client_packet(&subscribe(7, &[("verge/v1/#", 1)])) else {
            panic!("narrowed")
        };
        assert_eq!(filters_of(&sub), readable_filters(P, &[]));
        // The broker grants the five; the consumer sees one code for its one filter.
        let suback = packet(0x90, &[0, 7, 1, 1, 1, 1, 1]);
        assert_eq!(g.broker_packet(&suback), Some(packet(0x90, &[0, 7, 1])));
        // Desired states, status and logs: refused, answered here.
        assert_eq!(
            g.client_packet(&subscribe(
                8,
                &[
                    ("verge/v1/agents/+/desired", 1),
                    ("verge/v1/agents/e/status", 0)
                ]
            )),
            Verdict::Answer(packet(0x90, &[0, 8, 0x80, 0x80]))
        );
        // A region-limited consumer: its region, no presence, no _fleet.
        let mut g = connected(&["eu"]);
        let Verdict::Replace(sub) = g.client_packet(&subscribe(
            1,
            &[("#", 0), ("verge/v1/agents/+/presence", 0)],
        )) else {
            panic!("narrowed")
        };
        assert_eq!(
            filters_of(&sub),
            vec![
                "verge/v1/telemetry/eu/+",
                "verge/v1/events/eu/+",
                "verge/v1/alarms/eu/#",
                "verge/v1/fleet/events/eu"
            ]
        );
        assert_eq!(
            g.broker_packet(&packet(0x90, &[0, 1, 0, 0, 0, 0])),
            Some(packet(0x90, &[0, 1, 0, 0x80]))
        );
    }

    #[test]
    fn publishing_and_wills_close_the_connection() {
        let mut g = Guard::new("consumer:x".into(), readable_filters(P, &[]));
        // Nothing before CONNECT.
        assert_eq!(
            g.client_packet(&packet(0xc0, &[])),
            Verdict::Close(Refusal::Protocol)
        );
        assert_eq!(
            g.client_packet(&connect(0x06, "x")),
            Verdict::Close(Refusal::Will)
        );
        let Verdict::Replace(c) = g.client_packet(&connect(0x02, "edge-1")) else {
            panic!("accepted")
        };
        // The client id can never be an agent's.
        assert!(c.windows(17).any(|w| w == b"consumer:x:edge-1"));
        let mut publish = Vec::new();
        put_string(&mut publish, "verge/v1/agents/edge-1/presence").expect("short");
        publish.extend_from_slice(b"{}");
        for first in [0x30, 0x31, 0x32, 0x3d] {
            assert_eq!(
                g.client_packet(&packet(first, &publish)),
                Verdict::Close(Refusal::Publish)
            );
        }
        assert_eq!(
            g.client_packet(&connect(0x02, "again")),
            Verdict::Close(Refusal::Protocol)
        );
        assert_eq!(g.client_packet(&packet(0xc0, &[])), Verdict::Forward);
        assert_eq!(g.client_packet(&packet(0x40, &[0, 1])), Verdict::Forward);
    }

    #[test]
    fn framing_is_bounded() {
        assert_eq!(frame(&[0x30], 100), Ok(None));
        assert_eq!(frame(&[0x30, 2, 0], 100), Ok(None));
        assert_eq!(frame(&[0x30, 2, 0, 0, 9], 100), Ok(Some(4)));
        assert_eq!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff], 100),
            Err(FrameError::Length)
        );
        assert!(matches!(
            frame(&[0x30, 0xff, 0x7f], 100),
            Err(FrameError::TooLarge(..))
        ));
    }

    proptest! {
        #[test]
        fn no_input_panics_or_lets_a_publish_through(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                                     regions in proptest::collection::vec("[a-z]{1,3}", 0..3)) {
            let mut g = Guard::new("consumer:x".into(), readable_filters(P, &regions));
            let _ = g.client_packet(&connect(0x02, "x"));
            let mut buf = bytes.as_slice();
            while let Ok(Some(n)) = frame(buf, 1000) {
                let (one, rest) = buf.split_at(n);
                let verdict = g.client_packet(one);
                if one[0] >> 4 == 3 {
                    prop_assert_eq!(verdict.clone(), Verdict::Close(Refusal::Publish));
                }
                if let Verdict::Replace(sub) = &verdict && sub[0] == 0x82 {
                    for f in filters_of(sub) {
                        prop_assert!(readable_filters(P, &regions).iter().any(|r| intersect(&f, r).as_deref() == Some(f.as_str())),
                            "{} is not within the readable topics", f);
                    }
                }
                let _ = g.broker_packet(one);
                buf = rest;
            }
        }

        #[test]
        fn narrowed_filters_stay_within_the_readable_ones(levels in proptest::collection::vec(
            prop_oneof![Just("+".to_owned()), Just("#".to_owned()), Just("verge".to_owned()), Just("v1".to_owned()),
                        Just("agents".to_owned()), Just("desired".to_owned()), Just("telemetry".to_owned()),
                        Just("alarms".to_owned()), Just("eu".to_owned()), Just("_fleet".to_owned())], 1..7)) {
            let filter = levels.join("/");
            let g = Guard::new("consumer:x".into(), readable_filters(P, &["eu".to_owned()]));
            let readable = readable_filters(P, &["eu".to_owned()]);
            for narrowed in g.narrow(&filter) {
                prop_assert!(valid_filter(&narrowed));
                // Within a readable filter: it matches no topic that one does not.
                prop_assert!(readable.iter().any(|r| intersect(&narrowed, r).as_deref() == Some(narrowed.as_str())),
                    "{} from {}", narrowed, filter);
                prop_assert!(!narrowed.starts_with("verge/v1/agents"), "{} from {}", narrowed, filter);
            }
        }
    }
}

//! Telling the engine's echoes of our own disconnects from disconnects made by hand.
//!
//! Every disconnect a run makes comes back as an engine event, during the run or
//! shortly after it. Those must not trigger another run (each LAN move would cost a
//! second, empty run); a disconnect made by hand must (it took a runtime off its LAN).
//! Events that arrive during a run are held until it ends and says which disconnects
//! were its own; its own that have not arrived yet are expected for a while.

use std::time::{Duration, Instant};

/// How long a run's own disconnects are expected to echo after it ended.
const ECHO_WINDOW: Duration = Duration::from_secs(10);
/// Docker 20.10 sends every network disconnect event twice.
const ECHOES_PER_CHANGE: u8 = 2;

#[derive(Default, Debug)]
pub(super) struct Echoes {
    /// (network, container id) events seen while a run was in progress.
    held: Vec<(String, String)>,
    /// Our own disconnects whose events have not all arrived yet: how many more, and
    /// since when.
    expected: Vec<(String, String, u8, Instant)>,
}

impl Echoes {
    /// An event that is the echo of one of our disconnects: consumed, true.
    pub(super) fn consume(&mut self, network: &str, container: &str) -> bool {
        self.expected
            .retain(|(_, _, left, t)| *left > 0 && t.elapsed() < ECHO_WINDOW);
        match self
            .expected
            .iter_mut()
            .find(|(n, c, _, _)| n == network && c == container)
        {
            Some((_, _, left, _)) => {
                *left -= 1;
                true
            }
            None => false,
        }
    }

    pub(super) fn hold(&mut self, network: String, container: String) {
        self.held.push((network, container));
    }

    /// A run ended with these disconnects of its own; true when a held event was not
    /// one of them (a disconnect by hand: run again).
    pub(super) fn run_ended(&mut self, own: Vec<(String, String)>) -> bool {
        let now = Instant::now();
        self.expected
            .extend(own.into_iter().map(|(n, c)| (n, c, ECHOES_PER_CHANGE, now)));
        let held = std::mem::take(&mut self.held);
        let mut by_hand = false;
        for (n, c) in held {
            if !self.consume(&n, &c) {
                tracing::info!(network = %n, container = %c, "not our own disconnect");
                by_hand = true;
            }
        }
        by_hand
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: &str, c: &str) -> (String, String) {
        (n.to_string(), c.to_string())
    }

    #[test]
    fn own_disconnects_are_echoes_and_others_are_not() {
        let mut e = Echoes::default();
        // Seen during the run: one ours, one by hand.
        e.hold("net".into(), "c1".into());
        e.hold("net".into(), "c9".into());
        assert!(e.run_ended(vec![p("net", "c1"), p("net", "c2")]));
        // Ours, arriving late, twice (as 20.10 sends it): echoes; a third time: not.
        assert!(e.consume("net", "c2"));
        assert!(e.consume("net", "c2"));
        assert!(!e.consume("net", "c2"));
        // A run whose held events were all its own: nothing by hand.
        e.hold("net".into(), "c3".into());
        assert!(!e.run_ended(vec![p("net", "c3")]));
    }
}

//! Runtimes the engine stopped when it went down, to start again when it is back.
//!
//! Runtimes are created with restart policy `no` (as the older system makes them), so
//! an engine that stops (without live-restore) stops them and does not start them when
//! it comes back: the agent does. Which ones: those it last saw running (a real run's
//! observation, start events), and those whose `die` came during the engine's own
//! shutdown. The engine sends every container's `die` over the event stream before
//! closing it, exactly as for a `docker stop`, so a die counts as the engine's when it
//! came within [`SHUTDOWN_WINDOW`] of the stream's end (the engine waits up to each
//! container's stop timeout, 10 s by default, then kills it). A runtime stopped by
//! hand longer ago than that stays stopped, and one stopped by `agent runtime stop`
//! (or the cloud's `stop_device`) stays stopped whenever it was. Pure, so it is
//! unit-tested.
//!
//! What is owed a start survives the agent: [`EngineStops::remembered`] (what was
//! running or owed) is kept in `runtimes_running.json` (running_file.rs) and handed
//! back at start as owed, so a host reboot or an agent restart during an engine
//! outage starts what the engine stopped too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A die this close to the end of the engine's event stream was its shutdown's.
pub(super) const SHUTDOWN_WINDOW: Duration = Duration::from_secs(20);

#[derive(Default)]
pub(super) struct EngineStops {
    /// Runtimes last seen running.
    running: BTreeSet<String>,
    /// Runtimes that died while the engine was up, and when.
    died: BTreeMap<String, Instant>,
    /// To start once the engine is back.
    owed: BTreeSet<String>,
    /// Stopped by the agent's own stop command: its die is not the engine's.
    held: BTreeSet<String>,
    /// The engine was up when last heard of.
    up: bool,
}

impl EngineStops {
    /// Starts from what an earlier agent remembered: owed a start when the engine
    /// first answers, if found stopped then.
    pub(super) fn from_remembered(names: BTreeSet<String>) -> EngineStops {
        EngineStops {
            owed: names,
            ..Default::default()
        }
    }

    /// What the next agent must start if it finds it stopped: what runs or is owed.
    pub(super) fn remembered(&self) -> BTreeSet<String> {
        self.running.union(&self.owed).cloned().collect()
    }

    /// A real run's finding: these runtimes are running (a run adds what it sees;
    /// only events say one stopped).
    pub(super) fn observed(&mut self, running: &BTreeSet<String>) {
        for r in running {
            // A die after the run looked wins over what the run saw.
            if !self.died.contains_key(r) {
                self.running.insert(r.clone());
            }
        }
    }

    pub(super) fn started(&mut self, name: &str) {
        self.died.remove(name);
        self.owed.remove(name);
        self.held.remove(name);
        self.running.insert(name.to_string());
    }

    /// A die event: it was running until `at` (whether or not a run saw it).
    pub(super) fn died(&mut self, name: &str, at: Instant) {
        self.running.remove(name);
        self.died.insert(name.to_string(), at);
    }

    /// Removed (by hand or by `runtime delete`): nothing to start.
    pub(super) fn gone(&mut self, name: &str) {
        self.running.remove(name);
        self.died.remove(name);
        self.owed.remove(name);
        self.held.remove(name);
    }

    /// Stopped on purpose by the agent's stop command: stays stopped, even if the
    /// engine goes down right after (its die event may come before or after this).
    pub(super) fn stopped_on_purpose(&mut self, name: &str) {
        self.gone(name);
        self.held.insert(name.to_string());
    }

    /// The engine answers again (or for the first time): what is owed a start. It
    /// counts as running until a die says otherwise, so it stays remembered while
    /// its start is under way (or if that start fails, for the next return).
    pub(super) fn engine_up(&mut self) -> BTreeSet<String> {
        self.up = true;
        let owed = std::mem::take(&mut self.owed);
        self.running.extend(owed.iter().cloned());
        owed
    }

    /// The engine's event stream ended (or it does not answer) at `at`: what was
    /// running, or died during its shutdown, is owed a start.
    pub(super) fn engine_down(&mut self, at: Instant) {
        if !std::mem::take(&mut self.up) {
            return;
        }
        let shutdown = self
            .died
            .iter()
            .filter(|(n, t)| {
                at.saturating_duration_since(**t) <= SHUTDOWN_WINDOW && !self.held.contains(*n)
            })
            .map(|(n, _)| n.clone());
        self.owed.extend(shutdown);
        self.owed.append(&mut self.running);
        self.died.clear();
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn what_the_engine_stopped_at_its_shutdown_is_started_when_it_is_back() {
        let mut s = EngineStops::default();
        let t0 = Instant::now();
        assert!(
            s.engine_up().is_empty(),
            "nothing owed at the first connect"
        );
        s.observed(&set(&["a", "b", "c"]));
        // `c` stopped by hand long before; `a` and `b` die in the engine's shutdown.
        s.died("c", t0);
        let end = t0 + Duration::from_secs(60);
        s.died("a", end - Duration::from_secs(11));
        s.died("b", end - Duration::from_millis(200));
        s.engine_down(end);
        // A second "down" while down (the watch retrying) changes nothing.
        s.engine_down(end + Duration::from_secs(30));
        assert_eq!(s.engine_up(), set(&["a", "b"]));
        assert!(s.engine_up().is_empty(), "started once per return");
    }

    #[test]
    fn a_cut_link_owes_a_start_to_what_was_running_but_not_to_what_was_deleted() {
        let mut s = EngineStops::default();
        s.engine_up();
        s.started("a");
        s.observed(&set(&["b"]));
        s.started("c");
        s.engine_down(Instant::now());
        s.gone("c");
        // Starting what still runs is a no-op for the engine (304).
        assert_eq!(s.engine_up(), set(&["a", "b"]));
    }

    #[test]
    fn a_run_that_looked_before_a_die_does_not_revive_the_runtime() {
        let mut s = EngineStops::default();
        s.engine_up();
        let t0 = Instant::now();
        s.died("a", t0);
        s.observed(&set(&["a"]));
        s.engine_down(t0 + SHUTDOWN_WINDOW + Duration::from_secs(1));
        assert!(s.engine_up().is_empty());
    }

    #[test]
    fn what_an_earlier_agent_remembered_is_owed_at_the_first_connect_and_stays_remembered() {
        let mut s = EngineStops::from_remembered(set(&["a", "b"]));
        assert_eq!(s.remembered(), set(&["a", "b"]));
        // The engine is still down when the agent starts: nothing is lost.
        s.engine_down(Instant::now());
        assert_eq!(s.engine_up(), set(&["a", "b"]));
        // While their starts are under way they count as running.
        assert_eq!(s.remembered(), set(&["a", "b"]));
        s.died("b", Instant::now());
        assert_eq!(s.remembered(), set(&["a"]));
    }

    #[test]
    fn a_runtime_stopped_by_the_agent_stays_stopped_even_if_the_engine_stops_right_after() {
        let mut s = EngineStops::default();
        s.engine_up();
        s.observed(&set(&["a", "b", "c"]));
        let t0 = Instant::now();
        // `a`'s die event before the stop command's answer, `b`'s after it.
        s.died("a", t0);
        s.stopped_on_purpose("a");
        s.stopped_on_purpose("b");
        s.died("b", t0);
        assert_eq!(s.remembered(), set(&["c"]));
        s.died("c", t0 + Duration::from_secs(1));
        s.engine_down(t0 + Duration::from_secs(2));
        assert_eq!(s.engine_up(), set(&["c"]));
        // Started again later, `a` is owed a start at the next engine stop.
        s.started("a");
        s.engine_down(Instant::now());
        assert_eq!(s.engine_up(), set(&["a", "c"]));
    }
}

//! Reconcile scheduling: at most one run at a time; any number of requests during
//! a run are folded into exactly one run after it, and a waiter always gets the
//! report of a run that started after its request. Pure, so it is unit-tested.

pub(super) struct Runs<W> {
    /// `Some(dry_run)` while a run is in progress.
    pub(super) running: Option<bool>,
    /// Waiters of the real run in progress.
    current: Vec<W>,
    /// A real run is owed after the current one.
    pending: bool,
    next: Vec<W>,
    /// Dry runs asked for; one dry run answers them all.
    pending_dry: Vec<W>,
    pub(super) count: u64,
}

impl<W> Default for Runs<W> {
    fn default() -> Self {
        Runs {
            running: None,
            current: Vec::new(),
            pending: false,
            next: Vec::new(),
            pending_dry: Vec::new(),
            count: 0,
        }
    }
}

impl<W> Runs<W> {
    /// A real run is asked for; true when it should start now.
    pub(super) fn request(&mut self, waiter: Option<W>) -> bool {
        if self.running.is_some() {
            self.pending = true;
            self.next.extend(waiter);
            return false;
        }
        self.current.extend(waiter);
        true
    }

    /// A dry run is asked for; true when it should start now.
    pub(super) fn request_dry(&mut self, waiter: W) -> bool {
        self.pending_dry.push(waiter);
        self.running.is_none()
    }

    pub(super) fn started(&mut self, dry_run: bool) {
        self.running = Some(dry_run);
        self.count += 1;
    }

    /// The waiters a run that could not start must answer.
    pub(super) fn not_started(&mut self, dry_run: bool) -> Vec<W> {
        if dry_run {
            std::mem::take(&mut self.pending_dry)
        } else {
            std::mem::take(&mut self.current)
        }
    }

    /// The run in progress ended: its waiters.
    pub(super) fn finished(&mut self) -> Vec<W> {
        match self.running.take() {
            Some(true) => std::mem::take(&mut self.pending_dry),
            Some(false) => std::mem::take(&mut self.current),
            None => Vec::new(),
        }
    }

    /// What to start once idle: `Some(false)` a real run, `Some(true)` a dry run.
    pub(super) fn next_run(&mut self) -> Option<bool> {
        if self.running.is_some() {
            return None;
        }
        if self.pending {
            self.pending = false;
            self.current.append(&mut self.next);
            Some(false)
        } else if !self.pending_dry.is_empty() {
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Runs;

    #[test]
    fn requests_during_a_run_make_exactly_one_more_run() {
        let mut r: Runs<u32> = Runs::default();
        assert!(r.request(Some(1)));
        r.started(false);
        // Many requests while it runs: none starts now.
        for w in 2..=10 {
            assert!(!r.request(Some(w)));
        }
        assert!(!r.request(None));
        assert_eq!(
            r.finished(),
            vec![1],
            "the first run answers only its own waiter"
        );
        assert_eq!(r.next_run(), Some(false), "exactly one more run");
        r.started(false);
        assert_eq!(r.next_run(), None);
        assert_eq!(r.finished(), (2..=10).collect::<Vec<_>>());
        assert_eq!(r.next_run(), None, "and no third");
        assert_eq!(r.count, 2);
    }

    #[test]
    fn dry_runs_wait_for_a_real_run_and_share_one_dry_run() {
        let mut r: Runs<u32> = Runs::default();
        assert!(r.request(None));
        r.started(false);
        assert!(!r.request_dry(1));
        assert!(!r.request_dry(2));
        assert!(r.finished().is_empty());
        assert_eq!(r.next_run(), Some(true));
        r.started(true);
        assert!(!r.request(Some(3)));
        assert_eq!(r.finished(), vec![1, 2]);
        assert_eq!(r.next_run(), Some(false));
        r.started(false);
        assert_eq!(r.finished(), vec![3]);
        assert_eq!(r.next_run(), None);
    }

    #[test]
    fn a_run_that_cannot_start_answers_its_waiters() {
        let mut r: Runs<u32> = Runs::default();
        assert!(r.request(Some(7)));
        assert_eq!(r.not_started(false), vec![7]);
        assert!(r.request_dry(8));
        assert_eq!(r.not_started(true), vec![8]);
        assert_eq!(r.next_run(), None);
    }
}

//! Where a run's time went, part by part: the build summary's `time:` line and the kNN-graph
//! stage's parts in a CAGRA build's stats.

use std::time::{Duration, Instant};

/// Consecutive parts of a run, each timed from the end of the one before.
#[derive(Debug, Clone)]
pub struct Laps {
    last: Instant,
    done: Vec<(String, f64)>,
}

impl Default for Laps {
    fn default() -> Self {
        Self::start()
    }
}

impl Laps {
    /// The first part starts now.
    pub fn start() -> Self {
        Laps {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the part running since the last mark (or the start) under `name`.
    pub fn mark(&mut self, name: impl Into<String>) {
        let now = Instant::now();
        self.done
            .push((name.into(), now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }

    /// Records `name` as the first `seconds` of the part running now (one timed inside a
    /// call that ran since the last mark); the part goes on from there.
    pub fn took(&mut self, name: impl Into<String>, seconds: f64) {
        self.done.push((name.into(), seconds));
        self.last += Duration::from_secs_f64(seconds.max(0.0));
    }

    /// The parts so far, in order.
    pub fn parts(&self) -> &[(String, f64)] {
        &self.done
    }

    pub fn into_parts(self) -> Vec<(String, f64)> {
        self.done
    }

    /// `reading 0.91 s, building 3.70 s, …`
    pub fn summary(parts: &[(String, f64)]) -> String {
        let parts: Vec<String> = parts
            .iter()
            .map(|(name, s)| format!("{name} {s:.2} s"))
            .collect();
        parts.join(", ")
    }
}

/// Whether `VECBUILD_TRACE` is set: [`span`]s then print their time.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("VECBUILD_TRACE").is_some())
}

/// A timed part of a run for developers: with `VECBUILD_TRACE` set, `trace: WHAT 1.234 ms` goes
/// to stderr when it is dropped; otherwise it does nothing. GPU work is asynchronous, so a span
/// around a launch measures the launch; the span that waits for the results takes the rest.
pub struct Span {
    what: &'static str,
    start: Option<Instant>,
}

/// Starts a [`Span`].
pub fn span(what: &'static str) -> Span {
    Span {
        what,
        start: tracing().then(Instant::now),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            eprintln!(
                "trace: {} {:.3} ms",
                self.what,
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Laps;

    #[test]
    fn parts_follow_each_other_and_add_up() {
        let mut laps = Laps::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        laps.mark("a");
        std::thread::sleep(std::time::Duration::from_millis(30));
        laps.took("b inside c", 0.01);
        laps.mark("c");
        let p = laps.parts();
        let names: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["a", "b inside c", "c"]);
        assert!(p[0].1 >= 0.02, "{p:?}");
        // c is what the sleep took beyond b's 10 ms.
        assert!(p[2].1 >= 0.019 && p[2].1 < p[0].1 + 0.03, "{p:?}");
        assert_eq!(
            Laps::summary(&[("x".into(), 0.5), ("y".into(), 1.25)]),
            "x 0.50 s, y 1.25 s"
        );
    }
}

//! Progress bars on stderr (indicatif hides them when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for drawing random weights, `update(values drawn, values in all)` as the engine reports.
pub struct WeightsBar(ProgressBar);

impl WeightsBar {
    pub fn new(what: &str) -> Self {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{msg} {bar:30} {percent:>3}% {elapsed} (eta {eta})").expect("a valid template");
        bar.set_style(style);
        bar.set_message(what.to_string());
        Self(bar)
    }

    pub fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for WeightsBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

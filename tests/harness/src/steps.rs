//! The numbered steps the demos print (`keygate-demo`, `keygate-openviking-demo`):
//! `[n] what ....... status`, marked when the status is not the one expected, and counted so
//! that the demo fails when anything was unexpected.

/// A demo's steps so far and how many were not as expected.
pub struct Steps {
    n: usize,
    mismatches: usize,
    /// Column the status is printed at (dots fill up to it; at least three).
    width: usize,
}

impl Steps {
    pub fn new(width: usize) -> Steps {
        Steps {
            n: 0,
            mismatches: 0,
            width,
        }
    }

    /// How many steps or expectations were not met.
    pub fn mismatches(&self) -> usize {
        self.mismatches
    }

    /// Prints a numbered step with its status; `want` 0 means any 2xx.
    pub fn step(&mut self, what: &str, status: u16, want: u16) {
        self.n += 1;
        let label = format!("[{}] {what} ", self.n);
        let dots = ".".repeat(self.width.saturating_sub(label.chars().count()).max(3));
        let ok = if want == 0 {
            (200..300).contains(&status)
        } else {
            status == want
        };
        let mark = if ok {
            String::new()
        } else {
            self.mismatches += 1;
            let want = if want == 0 {
                "2xx".to_string()
            } else {
                want.to_string()
            };
            format!("   <-- expected {want}")
        };
        println!("{label}{dots} {status}{mark}");
    }

    /// Prints a numbered heading for the lines that follow.
    pub fn header(&mut self, what: &str) {
        self.n += 1;
        println!("[{}] {what}", self.n);
    }

    /// Prints an indented line under a step, marked (and counted) when `ok` is false.
    pub fn expect(&mut self, ok: bool, line: &str) {
        if ok {
            println!("      {line}");
        } else {
            self.mismatches += 1;
            println!("      {line}   <-- unexpected");
        }
    }
}

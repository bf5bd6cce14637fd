//! Stop strings over streamed text: text that could still turn into a stop string is held
//! back, so a client never sees the start of a stop sequence that later completes.

pub struct StopStrings {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> StopStrings {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds `piece`; returns the text now safe to send and whether a stop string
    /// completed (the text is then cut just before it).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        // A stop string may straddle pieces: search from where one could have begun.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
        }
        let safe = if self.stopped {
            self.text.len()
        } else {
            self.safe_end()
        };
        (self.take_until(safe), self.stopped)
    }

    /// Releases whatever is held back (the sequence ended without a stop string).
    pub fn finish(&mut self) -> String {
        self.take_until(self.text.len())
    }

    /// All text so far, cut at a stop string if one completed.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take_until(&mut self, end: usize) -> String {
        let out = self
            .text
            .get(self.emitted..end)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.emitted.max(end);
        out
    }

    /// End of the text that cannot become part of a stop string.
    fn safe_end(&self) -> usize {
        let held = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len()).filter(|&k| s.is_char_boundary(k) && self.text.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        self.text.len() - held
    }
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut streamed = String::new();
        for p in pieces {
            let (text, stopped) = s.push(p);
            streamed.push_str(&text);
            if stopped {
                return (streamed, true);
            }
        }
        streamed.push_str(&s.finish());
        (streamed, false)
    }

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_streamed() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_match() {
        assert_eq!(run(&["END"], &["a E", "x"]), ("a Ex".into(), false));
        assert_eq!(run(&["END"], &["a E"]), ("a E".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["ü!", "b"], &["aé", "ü", "!b"]), ("aé".into(), true));
        assert_eq!(run(&[""], &["x"]), ("x".into(), false));
    }
}

//! [`StreamDecoder`]: ids in one at a time, newly completed text out, never half a character.
//!
//! Why not decode each id alone: a byte-level BPE token can hold part of a UTF-8 character
//! (`你` is three tokens in a tiny vocabulary, and an emoji ZWJ sequence often spans several),
//! and some decoders change a token's text depending on its neighbours (leading-space
//! stripping). The algorithm is text-generation-inference's and HF `tokenizers`' `DecodeStream`:
//! keep a window `ids`, whose first `read` ids were already emitted and serve only as left
//! context; decode the window and the context alone; emit the difference, unless the window's
//! text ends in U+FFFD, which is what a character still missing its last bytes decodes to.

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// Incremental detokenizer. The concatenation of everything [`push`](Self::push) and
/// [`flush`](Self::flush) return equals `tokenizer.decode(all_ids, skip_special_tokens)`.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// `ids[..read]`: already emitted, kept as context; `ids[read..]`: not yet emitted.
    ids: Vec<u32>,
    read: usize,
    /// `decode(ids[..read])`: the text of the context, a prefix of the window's text.
    prefix: String,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pushed yet.
    pub fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            prefix: String::new(),
        }
    }

    /// Adds one id. Returns the text it completes, or `None` while the pending ids end inside a
    /// character (or add no text, e.g. a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.emit(&text).map(Some)
    }

    /// Emits whatever is pending, incomplete characters included (as U+FFFD, exactly as
    /// `decode` would), e.g. when generation stops. Returns `None` if nothing was pending.
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let new = self.emit(&text)?;
        Ok((!new.is_empty()).then_some(new))
    }

    /// Returns `text` minus the context's text and makes the pending ids the next context.
    fn emit(&mut self, text: &str) -> Result<String, TokenizerError> {
        let new = text.strip_prefix(self.prefix.as_str()).ok_or_else(|| {
            // Only a decoder whose output for earlier ids depends on later ones gets here.
            TokenizerError::Decode(format!(
                "stream decode: text {text:?} does not extend the already emitted {:?}",
                self.prefix
            ))
        })?;
        let new = new.to_string();
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok(new)
    }
}

//! Chat messages and the chat template, rendered with minijinja set up like transformers'
//! jinja2 sandbox (`_compile_jinja_template` in transformers/utils/chat_template_utils.py).
//!
//! What transformers does and we mirror: `trim_blocks=True, lstrip_blocks=True`, no
//! auto-escaping, no kept trailing newline; `loopcontrols`; globals `raise_exception`,
//! `strftime_now`, `namespace`, `dict`; a `tojson` filter that is Python's `json.dumps`
//! (`ensure_ascii=False`, Python separators); render variables `messages`, `tools` (None),
//! `documents` (None), `add_generation_prompt` and every special token the config names
//! (`bos_token`, `eos_token`, …). Python string and dict methods (`.strip()`, `.split()`,
//! `.items()`, …) come from minijinja-contrib's pycompat; minijinja 3 already prints `None`,
//! `True`, lists and dicts as Python does.
//!
//! Known difference: minijinja sorts the keys of dicts a template builds (`{'b': 1, 'a': 2}`)
//! where Python keeps insertion order; it shows only if such a dict goes through `tojson` or is
//! iterated (some templates do that for tool calls, which `ChatMessage` cannot carry). Messages
//! themselves keep Python's key order.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{context, AutoEscape, Environment, Error, ErrorKind};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;
use crate::python_compat;

/// One chat message. `content` deserializes from a plain string or from OpenAI content parts
/// (`[{"type": "text", "text": ...}, ...]`, text parts joined with `"\n"` as vLLM does for
/// templates that expect a string); it always serializes as a string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(deserialize_with = "deserialize_content")]
    pub content: String,
}

impl ChatMessage {
    /// A message from a role (`"system"`, `"user"`, `"assistant"`, `"tool"`) and its text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Accepts `"text"` or `[{"type": "text", "text": "..."}, ...]`; other part types are errors
/// (whale serves text-only models).
fn deserialize_content<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct ContentVisitor;

    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        text: Option<String>,
    }

    impl<'de> Visitor<'de> for ContentVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of {\"type\": \"text\", \"text\": ...} parts")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut texts = Vec::new();
            while let Some(part) = seq.next_element::<Part>()? {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => texts.push(text),
                    ("text", None) => return Err(de::Error::missing_field("text")),
                    (other, _) => {
                        return Err(de::Error::custom(format_args!(
                            "unsupported content part type `{other}` (only text is supported)"
                        )))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }

    deserializer.deserialize_any(ContentVisitor)
}

/// A message as the template sees it: a map with keys in Python's insertion order (`role`,
/// `content`), so `message|tojson` and `message.items()` match transformers; absent keys
/// (`tool_calls`, `name`, …) are undefined, as for transformers' dicts.
#[derive(Debug)]
struct TemplateMessage(ChatMessage);

impl Object for TemplateMessage {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// Name the template is registered under; minijinja errors say `(in chat_template:LINE)`.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template and where it came from.
pub(crate) struct ChatTemplate {
    /// `tokenizer_config.json` or `chat_template.jinja`, for error messages.
    source_path: PathBuf,
    /// The compile error, if any, is kept to be reported when templating is asked for.
    env: Result<Environment<'static>, String>,
}

impl ChatTemplate {
    /// Compiles `source` in an environment configured like transformers'. `special_tokens` are
    /// `(name, content)` pairs made template globals (`bos_token`, `eos_token`, …).
    pub(crate) fn new(
        source_path: PathBuf,
        source: String,
        special_tokens: &[(&str, String)],
    ) -> Self {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Debug mode clones the template source into every error; we only need the message.
        env.set_debug(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", python_compat::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", python_compat::strftime_now);
        for (name, content) in special_tokens {
            env.add_global(name.to_string(), Value::from(content.as_str()));
        }
        let env = match env.add_template_owned(TEMPLATE_NAME, source) {
            Ok(()) => Ok(env),
            Err(e) => Err(e.to_string()),
        };
        ChatTemplate { source_path, env }
    }

    /// Renders `messages` (non-empty, checked by the caller).
    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let error = |message: String| TokenizerError::Template {
            path: self.source_path.clone(),
            message,
        };
        let env = self.env.as_ref().map_err(|e| error(e.clone()))?;
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| error(e.to_string()))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(TemplateMessage(m.clone())))
            .collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                tools => (),
                documents => (),
            })
            .map_err(|e| error(e.to_string()))
    }
}

/// transformers' `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_accepts_a_string_or_text_parts() {
        let plain: ChatMessage =
            serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(plain, ChatMessage::new("user", "hi"));
        let parts: ChatMessage = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(parts.content, "a\nb");
        // Always serialized as a plain string.
        assert_eq!(
            serde_json::to_string(&parts).unwrap(),
            r#"{"role":"user","content":"a\nb"}"#
        );

        let image =
            r#"{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}"#;
        let err = serde_json::from_str::<ChatMessage>(image)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image_url"), "{err}");
        for bad in [
            r#"{"role": "user", "content": 3}"#,
            r#"{"role": "user", "content": null}"#,
        ] {
            let err = serde_json::from_str::<ChatMessage>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a string or an array"), "{err}");
        }
    }
}

//! The provider policy section: which LLM providers and models a client may pick with
//! `?provider=` / `?model=` (`LLM_ALLOWED`), or none at all (`LLM_PIN`). How a connection's
//! choice is resolved under it is `llm::policy`.
//!
//! `LLM_ALLOWED` is a comma-separated list of `provider` (any model of it) or `provider:model`
//! (that model only; the model may itself hold `:`, as in `ollama:mistral:instruct`). Default: the
//! default provider (`LLM_PROVIDER`) with any model, nothing else.

/// The provider names, as `LLM_PROVIDER`, `LLM_ALLOWED` and `?provider=` spell them.
pub const PROVIDERS: [&str; 3] = ["offline", "openai", "ollama"];

/// One allowed entry: a provider, and a model or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub provider: String,
    /// `None`: any model of the provider.
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed: Vec<Allowed>,
    /// Client choices are ignored entirely.
    pub pin: bool,
    pub default_provider: String,
    /// The default provider's model (`LLM_MODEL`), if the operator set one.
    pub default_model: Option<String>,
}

/// Parses `LLM_ALLOWED`; the error says which entry is wrong.
pub fn parse_allowed(value: &str) -> Result<Vec<Allowed>, String> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (provider, model) = match entry.split_once(':') {
            Some((p, m)) if m.is_empty() || m == "*" => (p, None),
            Some((p, m)) => (p, Some(m.to_string())),
            None => (entry, None),
        };
        let provider = provider.trim().to_ascii_lowercase();
        if !PROVIDERS.contains(&provider.as_str()) {
            return Err(format!(
                "{entry:?}: {provider:?} is not one of offline, openai, ollama"
            ));
        }
        out.push(Allowed { provider, model });
    }
    if out.is_empty() {
        return Err("names no provider".into());
    }
    Ok(out)
}

impl Policy {
    /// True when the policy lets a client use `provider` with `model` (`None`: its default).
    pub fn permits(&self, provider: &str, model: Option<&str>) -> bool {
        self.allowed.iter().any(|a| {
            a.provider == provider
                && match (&a.model, model) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                }
        })
    }

    /// True when the default provider is allowed (it must be, or nothing could answer).
    pub fn allows_default(&self) -> bool {
        self.allowed
            .iter()
            .any(|a| a.provider == self.default_provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_refuses_unknown_providers() {
        let a = parse_allowed("offline, ollama:mistral:instruct ,openai:*").unwrap();
        assert_eq!(a[0].model, None);
        assert_eq!(a[1].provider, "ollama");
        assert_eq!(a[1].model.as_deref(), Some("mistral:instruct"));
        assert_eq!(a[2].model, None);
        assert!(parse_allowed("gpt").unwrap_err().contains("gpt"));
        assert!(parse_allowed(" , ").is_err());
    }
}

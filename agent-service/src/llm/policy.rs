//! Resolving a connection's provider and model under the provider policy (the `LLM_ALLOWED` /
//! `LLM_PIN` section, [`Policy`], is read in `config::llm`). A choice outside the policy falls back
//! to the default provider and model, with a notice the connection shows in its welcome message
//! and in the first status-log entry of each answer.

use crate::config::Policy;

/// What a connection answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub provider: String,
    /// `None`: the provider's own default model.
    pub model: Option<String>,
    /// Set when the client's choice was not honoured: a sentence saying so.
    pub notice: Option<String>,
}

impl Policy {
    fn default_choice(&self, notice: Option<String>) -> Choice {
        Choice {
            provider: self.default_provider.clone(),
            model: self.default_model.clone(),
            notice,
        }
    }

    /// Resolves a client's `provider` and `model` query parameters. `default_model_of` gives a
    /// provider's built-in default model, for the notice's wording.
    pub fn resolve(
        &self,
        provider: Option<&str>,
        model: Option<&str>,
        default_model_of: &dyn Fn(&str) -> String,
    ) -> Choice {
        let model = model.filter(|m| !m.is_empty());
        let provider = provider.filter(|p| !p.is_empty());
        let fallback = || {
            let m = self
                .default_model
                .clone()
                .unwrap_or_else(|| default_model_of(&self.default_provider));
            format!("{}/{m}", self.default_provider)
        };
        let Some(asked) = provider.map(str::to_ascii_lowercase) else {
            // No provider named: the default provider, with the client's model if allowed.
            return match model {
                Some(m) if !self.pin && self.permits(&self.default_provider, Some(m)) => Choice {
                    provider: self.default_provider.clone(),
                    model: Some(m.to_string()),
                    notice: None,
                },
                Some(m) => self.default_choice(Some(format!(
                    "model {m} is not enabled here; answering with {}",
                    fallback()
                ))),
                None => self.default_choice(None),
            };
        };
        let is_default = asked == self.default_provider;
        let wanted_model = model
            .map(str::to_string)
            .or_else(|| self.default_model.clone().filter(|_| is_default));
        if self.pin {
            let same = is_default && wanted_model == self.default_model;
            let notice = (!same).then(|| {
                format!(
                    "this server answers with {} only; {asked} was not used",
                    fallback()
                )
            });
            return self.default_choice(notice);
        }
        if !self.allowed.iter().any(|a| a.provider == asked) {
            return self.default_choice(Some(format!(
                "{asked} is not enabled here; answering with {}",
                fallback()
            )));
        }
        let effective = wanted_model
            .clone()
            .unwrap_or_else(|| default_model_of(&asked));
        if self.permits(&asked, Some(&effective)) || self.permits(&asked, wanted_model.as_deref()) {
            return Choice {
                provider: asked,
                model: wanted_model,
                notice: None,
            };
        }
        self.default_choice(Some(format!(
            "{asked}/{effective} is not enabled here; answering with {}",
            fallback()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_allowed;

    fn policy(allowed: &str, pin: bool) -> Policy {
        Policy {
            allowed: parse_allowed(allowed).unwrap(),
            pin,
            default_provider: "offline".into(),
            default_model: None,
        }
    }

    fn builtin(p: &str) -> String {
        match p {
            "ollama" => "mistral:instruct".into(),
            "openai" => "gpt-4o-mini".into(),
            _ => "offline-demo".into(),
        }
    }

    #[test]
    fn a_provider_outside_the_policy_falls_back_with_a_notice() {
        let p = policy("offline", false);
        let c = p.resolve(Some("ollama"), Some("mistral:instruct"), &builtin);
        assert_eq!(c.provider, "offline");
        assert_eq!(c.model, None);
        assert_eq!(
            c.notice.as_deref(),
            Some("ollama is not enabled here; answering with offline/offline-demo")
        );
        let c = p.resolve(Some("offline"), None, &builtin);
        assert_eq!(c.notice, None);
        assert_eq!(p.resolve(None, None, &builtin).notice, None);
    }

    #[test]
    fn models_are_checked_when_the_entry_names_one() {
        let p = policy("offline,ollama:mistral:instruct", false);
        let ok = p.resolve(Some("ollama"), None, &builtin);
        assert_eq!((ok.provider.as_str(), ok.notice), ("ollama", None));
        let ok = p.resolve(Some("ollama"), Some("mistral:instruct"), &builtin);
        assert_eq!(ok.model.as_deref(), Some("mistral:instruct"));
        let no = p.resolve(Some("ollama"), Some("llama3:70b"), &builtin);
        assert_eq!(no.provider, "offline");
        assert!(no
            .notice
            .unwrap()
            .starts_with("ollama/llama3:70b is not enabled here"));
    }

    #[test]
    fn pin_ignores_every_client_choice() {
        let p = policy("offline,openai", true);
        let c = p.resolve(Some("openai"), Some("gpt-4o"), &builtin);
        assert_eq!(c.provider, "offline");
        assert!(c.notice.unwrap().contains("offline/offline-demo only"));
        assert_eq!(p.resolve(Some("offline"), None, &builtin).notice, None);
        assert_eq!(p.resolve(None, None, &builtin).notice, None);
        assert!(p
            .resolve(None, Some("x"), &builtin)
            .notice
            .unwrap()
            .contains("model x"));
    }
}

//! Which interfaces netmon reports: shell-style globs over interface names.
//!
//! Patterns support `*`, `?` and bracket sets (`[abc]`, `[a-z]`, `[!0-9]`). A pattern
//! without wildcards matches exactly that name: `eth1` never matches `eth10`, `lo`
//! only `lo`.

/// The interfaces the Python sidecar never reported (PROTOCOL.md, "Reported interfaces").
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "lo",
    "docker*",
    "br-*",
    "veth*",
    "virbr*",
    "tailscale*",
    "zt*",
    "cni*",
    "flannel*",
    "kube-ipvs*",
    "wg*",
    "cilium*",
    "macvtap*",
    "sit*",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("empty interface pattern: give a name or a glob such as `eth*`")]
    Empty,
    #[error("interface pattern {0:?}: unclosed `[`")]
    UnclosedBracket(String),
    #[error("interface pattern {0:?}: empty `[]` set")]
    EmptySet(String),
}

/// One compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyOne,
    AnyMany,
    Set {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Glob {
    fn parse(pattern: &str) -> Result<Glob, FilterError> {
        if pattern.is_empty() {
            return Err(FilterError::Empty);
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    // Consecutive stars mean the same as one; collapsing them keeps matching linear.
                    if tokens.last() != Some(&Token::AnyMany) {
                        tokens.push(Token::AnyMany);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::AnyOne);
                    i += 1;
                }
                '[' => {
                    let mut j = i + 1;
                    let negated = matches!(chars.get(j), Some('!' | '^'));
                    if negated {
                        j += 1;
                    }
                    let mut items = Vec::new();
                    // A `]` right after the opening bracket is a literal, as in shells.
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(j) else {
                            return Err(FilterError::UnclosedBracket(pattern.to_string()));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if chars.get(j + 1) == Some(&'-')
                            && chars.get(j + 2).is_some_and(|&e| e != ']')
                        {
                            items.push((c, chars[j + 2]));
                            j += 3;
                        } else {
                            items.push((c, c));
                            j += 1;
                        }
                    }
                    if items.is_empty() {
                        return Err(FilterError::EmptySet(pattern.to_string()));
                    }
                    tokens.push(Token::Set { negated, items });
                    i = j + 1;
                }
                c => {
                    tokens.push(Token::Char(c));
                    i += 1;
                }
            }
        }
        Ok(Glob {
            source: pattern.to_string(),
            tokens,
        })
    }

    fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let t = &self.tokens;
        // Iterative matcher with single-star backtracking: O(len(name) * len(pattern)).
        let (mut ti, mut ni) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ni < name.len() {
            let step = match t.get(ti) {
                Some(Token::AnyMany) => {
                    star = Some((ti, ni));
                    ti += 1;
                    continue;
                }
                Some(tok) => tok.matches_one(name[ni]),
                None => false,
            };
            if step {
                ti += 1;
                ni += 1;
            } else if let Some((st, sn)) = star {
                ti = st + 1;
                ni = sn + 1;
                star = Some((st, sn + 1));
            } else {
                return false;
            }
        }
        t[ti..].iter().all(|tok| *tok == Token::AnyMany)
    }
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::AnyOne => true,
            Token::AnyMany => true,
            Token::Set { negated, items } => {
                items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// The include/exclude rules for interface names.
#[derive(Clone, Debug)]
pub struct Filter {
    includes: Vec<Glob>,
    excludes: Vec<Glob>,
    defaults: Vec<Glob>,
}

impl Filter {
    /// `include`: if non-empty, a name must match one of them. Excluded: the names
    /// matching [`DEFAULT_EXCLUDES`] or `exclude`.
    ///
    /// A name matched by an include pattern is not subject to the default excludes, so
    /// `--include 'veth*'` lets a user watch veths; the user's own excludes always win.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, FilterError> {
        let parse_all = |v: &[String]| {
            v.iter()
                .map(|p| Glob::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Filter {
            includes: parse_all(include)?,
            excludes: parse_all(exclude)?,
            ..Filter::default()
        })
    }

    /// Whether interface `name` is reported.
    pub fn allows(&self, name: &str) -> bool {
        let included = self.includes.iter().any(|g| g.matches(name));
        if !self.includes.is_empty() && !included {
            return false;
        }
        if self.excludes.iter().any(|g| g.matches(name)) {
            return false;
        }
        included || !self.defaults.iter().any(|g| g.matches(name))
    }

    /// The patterns as given, for logs: (includes, excludes without the defaults).
    pub fn patterns(&self) -> (Vec<&str>, Vec<&str>) {
        (
            self.includes.iter().map(|g| g.source.as_str()).collect(),
            self.excludes.iter().map(|g| g.source.as_str()).collect(),
        )
    }
}

impl Default for Filter {
    /// Only the default excludes.
    fn default() -> Self {
        Filter {
            includes: Vec::new(),
            excludes: Vec::new(),
            defaults: DEFAULT_EXCLUDES
                .iter()
                .filter_map(|p| Glob::parse(p).ok())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn glob(p: &str, name: &str) -> bool {
        Glob::parse(p).unwrap().matches(name)
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("eth1", "eth1"));
        assert!(!glob("eth1", "eth10"));
        assert!(!glob("eth10", "eth1"));
        assert!(glob("eth*", "eth"));
        assert!(glob("eth*", "eth10"));
        assert!(!glob("eth*", "xeth0"));
        assert!(glob("*0", "eth0"));
        assert!(glob("e*h*1", "eeehhh1"));
        assert!(!glob("e*h*1", "eeehhh12"));
        assert!(glob("eth?", "eth3"));
        assert!(!glob("eth?", "eth33"));
        assert!(glob("eth[13]", "eth3"));
        assert!(!glob("eth[13]", "eth2"));
        assert!(glob("eth[0-9]", "eth7"));
        assert!(glob("eth[!0-9]", "ethx"));
        assert!(!glob("eth[!0-9]", "eth7"));
        assert!(glob("a[]]b", "a]b"));
        assert!(glob("**x", "abx"));
        assert!(glob("*", ""));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert_eq!(Glob::parse("").unwrap_err(), FilterError::Empty);
        assert!(matches!(
            Glob::parse("eth[0-"),
            Err(FilterError::UnclosedBracket(_))
        ));
        assert!(Filter::new(&s(&["eth["]), &[]).is_err());
        assert!(Filter::new(&[], &s(&[""])).is_err());
    }

    #[test]
    fn default_excludes() {
        let f = Filter::new(&[], &[]).unwrap();
        for name in [
            "lo",
            "docker0",
            "br-1a2b",
            "veth12ab",
            "virbr0",
            "tailscale0",
            "zt0",
            "cni0",
            "flannel.1",
            "kube-ipvs0",
            "wg0",
            "cilium_host",
            "macvtap0",
            "sit0",
        ] {
            assert!(!f.allows(name), "{name} should be excluded by default");
        }
        // Exactness: only `lo` itself, and prefixes only where the pattern says so.
        for name in [
            "eth0", "ens37", "lo0", "loopback", "wlan0", "enp0s3", "bond0", "br0",
        ] {
            assert!(f.allows(name), "{name} should be reported by default");
        }
    }

    #[test]
    fn include_restricts_and_is_exact() {
        let f = Filter::new(&s(&["eth1"]), &[]).unwrap();
        assert!(f.allows("eth1"));
        assert!(!f.allows("eth10"));
        assert!(!f.allows("eth0"));
        let f = Filter::new(&s(&["eth*", "wlan0"]), &[]).unwrap();
        assert!(f.allows("eth10"));
        assert!(f.allows("wlan0"));
        assert!(!f.allows("wlan1"));
    }

    #[test]
    fn include_overrides_default_excludes_only() {
        let f = Filter::new(&s(&["veth*"]), &[]).unwrap();
        assert!(f.allows("veth0abc"));
        assert!(!f.allows("docker0"), "not included, so not reported");
        let f = Filter::new(&s(&["veth*", "eth*"]), &s(&["veth9*"])).unwrap();
        assert!(f.allows("veth1"));
        assert!(
            !f.allows("veth95"),
            "the user's own exclude wins over the include"
        );
        let f = Filter::new(&s(&["lo"]), &[]).unwrap();
        assert!(f.allows("lo"));
    }

    #[test]
    fn user_excludes_add_to_defaults() {
        let f = Filter::new(&[], &s(&["eth1", "ens*"])).unwrap();
        assert!(!f.allows("eth1"));
        assert!(f.allows("eth10"));
        assert!(!f.allows("ens37"));
        assert!(!f.allows("docker0"));
        assert!(f.allows("eth0"));
    }
}

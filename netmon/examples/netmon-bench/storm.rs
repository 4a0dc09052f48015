//! The two storms: `toggle` (add or delete a /32, one netlink message per operation)
//! and `moves` (delete an interface's /24 address and add one in another /24: each
//! operation also brings the prefix and local routes, 3-4 messages per operation).

use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Toggle,
    Moves,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "toggle" => Some(Kind::Toggle),
            "moves" => Some(Kind::Moves),
            _ => None,
        }
    }
}

/// `ip -batch` text and the interfaces whose final state differs from the start.
pub struct Storm {
    pub commands: String,
    pub changed: BTreeSet<String>,
}

/// The address of interface `i` after `step` moves: a /24 of its own in 10.0.0.0/8
/// (64 per interface, reused cyclically: only one is ever present at a time).
fn moved_address(i: usize, step: usize) -> String {
    let x = i * 64 + step % 64;
    format!("10.{}.{}.1/24", x >> 8 & 255, x & 255)
}

/// Commands that give every interface its first address for the `moves` storm
/// (run before netmon starts).
pub fn moves_setup(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("addr add {} dev {n}\n", moved_address(i, 0)))
        .collect()
}

/// `ops` operations over `names`, interfaces picked at random with a fixed seed.
pub fn build(kind: Kind, names: &[String], ops: usize) -> Storm {
    let mut per_if = vec![0usize; names.len()];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut commands = String::with_capacity(ops * 48);
    match kind {
        Kind::Toggle => {
            // Per interface, alternately add and delete its next address: an interface
            // with an odd number of operations ends with one more address.
            for _ in 0..ops {
                let i = rng.usize(..names.len());
                let n = per_if[i];
                per_if[i] += 1;
                let addr = format!("10.{}.{}.{}/32", 100 + i / 250, i % 250, n / 2 % 250 + 1);
                let verb = if n % 2 == 0 { "add" } else { "del" };
                commands.push_str(&format!("addr {verb} {addr} dev {}\n", names[i]));
            }
        }
        Kind::Moves => {
            // One move is two operations: delete the current address, add the next.
            for _ in 0..ops / 2 {
                let i = rng.usize(..names.len());
                let n = per_if[i];
                per_if[i] += 1;
                let dev = &names[i];
                commands.push_str(&format!("addr del {} dev {dev}\n", moved_address(i, n)));
                commands.push_str(&format!("addr add {} dev {dev}\n", moved_address(i, n + 1)));
            }
        }
    }
    let changed = names
        .iter()
        .zip(&per_if)
        .filter(|(_, n)| match kind {
            Kind::Toggle => *n % 2 == 1,
            Kind::Moves => *n % 64 != 0,
        })
        .map(|(name, _)| name.clone())
        .collect();
    Storm { commands, changed }
}

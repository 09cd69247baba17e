//! The most limited clients, for `eddy-edge stats`: a bounded counter map (the Space-Saving algorithm:
//! when full, a new client takes the place of the least counted one and inherits its count, so heavy
//! hitters are never lost and memory stays fixed even when refused identities are spoofed).

use std::collections::HashMap;

pub struct TopClients {
    capacity: usize,
    counts: HashMap<String, u64>,
}

impl TopClients {
    pub fn new(capacity: usize) -> TopClients {
        TopClients { capacity: capacity.max(1), counts: HashMap::new() }
    }

    pub fn record(&mut self, client: &str) {
        if let Some(count) = self.counts.get_mut(client) {
            *count += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= self.capacity {
            let smallest = self.counts.iter().min_by_key(|(_, &c)| c).map(|(k, &c)| (k.clone(), c));
            if let Some((victim, count)) = smallest {
                self.counts.remove(&victim);
                inherited = count;
            }
        }
        self.counts.insert(client.to_string(), inherited + 1);
    }

    /// The `n` largest counts, largest first (ties by name, for stable output).
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self.counts.iter().map(|(k, &c)| (k.clone(), c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_survive_a_flood_of_one_off_clients() {
        let mut top = TopClients::new(64);
        for _ in 0..100 {
            top.record("ip:heavy");
        }
        for _ in 0..30 {
            top.record("ip:medium");
        }
        for i in 0..1000 {
            top.record(&format!("ip:spoofed-{i}"));
        }
        let list = top.top(2);
        assert_eq!(list[0], ("ip:heavy".to_string(), 100));
        assert_eq!(list[1], ("ip:medium".to_string(), 30));
        assert_eq!(top.top(1000).len(), 64, "bounded");
    }
}

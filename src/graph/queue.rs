//! The ready queue: which nodes of a DAG can run now, given what has finished. A pure data
//! structure (cargo's `DependencyQueue` idea): no I/O, no threads.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Nodes waiting for their dependencies.
#[derive(Debug, Clone)]
pub struct ReadyQueue {
    waiting_on: BTreeMap<String, BTreeSet<String>>,
    dependents: BTreeMap<String, BTreeSet<String>>,
    ready: VecDeque<String>,
}

impl ReadyQueue {
    /// A queue over `nodes` (key → dependencies). Dependencies outside `nodes` count as done.
    pub fn new(nodes: &BTreeMap<String, BTreeSet<String>>) -> ReadyQueue {
        let mut waiting_on = BTreeMap::new();
        let mut dependents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut ready = VecDeque::new();
        for (key, deps) in nodes {
            let deps: BTreeSet<String> = deps
                .iter()
                .filter(|d| nodes.contains_key(*d))
                .cloned()
                .collect();
            for d in &deps {
                dependents.entry(d.clone()).or_default().insert(key.clone());
            }
            if deps.is_empty() {
                ready.push_back(key.clone());
            } else {
                waiting_on.insert(key.clone(), deps);
            }
        }
        ReadyQueue {
            waiting_on,
            dependents,
            ready,
        }
    }

    /// The next node that can run.
    pub fn pop(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    /// Marks `key` done; its dependents whose last dependency it was become ready.
    pub fn done(&mut self, key: &str) {
        for dependent in self.dependents.remove(key).unwrap_or_default() {
            if let Some(deps) = self.waiting_on.get_mut(&dependent) {
                deps.remove(key);
                if deps.is_empty() {
                    self.waiting_on.remove(&dependent);
                    self.ready.push_back(dependent);
                }
            }
        }
    }

    /// Marks `key` failed; returns every node that can now never run (transitively).
    pub fn failed(&mut self, key: &str) -> Vec<String> {
        let mut lost = Vec::new();
        let mut todo = vec![key.to_string()];
        while let Some(k) = todo.pop() {
            for dependent in self.dependents.remove(&k).unwrap_or_default() {
                if self.waiting_on.remove(&dependent).is_some() {
                    lost.push(dependent.clone());
                    todo.push(dependent);
                }
            }
        }
        lost
    }

    /// Whether nothing is ready and nothing waits.
    pub fn is_finished(&self) -> bool {
        self.ready.is_empty() && self.waiting_on.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(k, d)| (k.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn releases_nodes_as_dependencies_finish() {
        let mut q = ReadyQueue::new(&graph(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a", "b"]),
            ("d", &["outside"]),
        ]));
        assert_eq!(
            (q.pop().as_deref(), q.pop().as_deref(), q.pop()),
            (Some("a"), Some("d"), None)
        );
        q.done("a");
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.done("b");
        assert_eq!(q.pop().as_deref(), Some("c"));
        q.done("c");
        q.done("d");
        assert!(q.is_finished());
    }

    #[test]
    fn failure_loses_every_dependent() {
        let mut q = ReadyQueue::new(&graph(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("x", &[]),
        ]));
        assert_eq!(q.pop().as_deref(), Some("a"));
        let mut lost = q.failed("a");
        lost.sort();
        assert_eq!(lost, ["b", "c"]);
        assert_eq!(q.pop().as_deref(), Some("x"));
        q.done("x");
        assert!(q.is_finished());
    }
}

//! Wire compatibility with the last release (proto/released/): every message, field, enum
//! value, service and method it had is still there under the same number, name and type,
//! so an old worker or herdctl keeps working against a new master and the other way
//! round. New fields, values, messages and methods are free. Making a release copies
//! proto/herd.proto to proto/released/VERSION/ and points build.rs at it.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

const RELEASED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/released_descriptor.bin"));

/// Everything a peer relies on, as `(path, what it is)`: a field by its number, an enum
/// value by its number, a method by its name.
fn contract(set: &[u8]) -> BTreeMap<String, String> {
    let set = FileDescriptorSet::decode(set).expect("a descriptor set");
    let mut out = BTreeMap::new();
    for file in &set.file {
        let package = file.package();
        for message in &file.message_type {
            walk(&format!("{package}.{}", message.name()), message, &mut out);
        }
        for e in &file.enum_type {
            for v in &e.value {
                out.insert(
                    format!("{package}.{} = {}", e.name(), v.number()),
                    v.name().to_string(),
                );
            }
        }
        for service in &file.service {
            for m in &service.method {
                out.insert(
                    format!("{package}.{}.{}", service.name(), m.name()),
                    format!(
                        "{} -> {}{}{}",
                        m.input_type(),
                        m.output_type(),
                        if m.client_streaming() {
                            ", client streaming"
                        } else {
                            ""
                        },
                        if m.server_streaming() {
                            ", server streaming"
                        } else {
                            ""
                        },
                    ),
                );
            }
        }
    }
    out
}

fn walk(path: &str, message: &DescriptorProto, out: &mut BTreeMap<String, String>) {
    out.insert(path.to_string(), "message".into());
    for f in &message.field {
        out.insert(
            format!("{path} = {}", f.number()),
            format!(
                "{} {:?} {:?} {}",
                f.name(),
                f.label(),
                f.r#type(),
                f.type_name()
            ),
        );
    }
    for nested in &message.nested_type {
        walk(&format!("{path}.{}", nested.name()), nested, out);
    }
    for e in &message.enum_type {
        for v in &e.value {
            out.insert(
                format!("{path}.{} = {}", e.name(), v.number()),
                v.name().to_string(),
            );
        }
    }
}

/// What `old` promised that `new` breaks.
fn broken(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    old.iter()
        .filter_map(|(path, was)| match new.get(path) {
            None => Some(format!("{path} ({was}) was removed or renumbered")),
            Some(now) if now != was => Some(format!("{path} was `{was}`, is `{now}`")),
            Some(_) => None,
        })
        .collect()
}

#[test]
fn the_contract_keeps_everything_the_last_release_had() {
    let (old, new) = (contract(RELEASED), contract(crate::pb::FILE_DESCRIPTOR_SET));
    assert!(old.len() > 100, "the released contract was read");
    let broken = broken(&old, &new);
    assert!(
        broken.is_empty(),
        "proto/herd.proto breaks the wire contract of the last release:\n{}",
        broken.join("\n")
    );
}

/// The check sees what it must: a field renumbered, retyped or removed, an enum value
/// renamed, a method's types changed.
#[test]
fn a_renumbered_retyped_or_removed_field_is_caught() {
    let old = contract(RELEASED);
    for (path, change) in [
        ("herd.v1.RegisterResponse = 1", None),
        (
            "herd.v1.TaskUpdate = 2",
            Some("attempt Optional TypeUint64 "),
        ),
        ("herd.v1.TaskEvent = 5", Some("TASK_EVENT_GONE")),
        (
            "herd.v1.Registry.Register",
            Some(".herd.v1.RegisterRequest -> .herd.v1.TaskInfo"),
        ),
    ] {
        let mut new = old.clone();
        assert!(old.contains_key(path), "{path} is in the contract");
        match change {
            None => new.remove(path),
            Some(now) => new.insert(path.to_string(), now.to_string()),
        };
        assert_eq!(broken(&old, &new).len(), 1, "{path}");
    }
}

//! Policies: HNS documents on endpoints and networks, checked whole,
//! kept as given, compiled into each endpoint's [`Layers`] and pushed to
//! the datapath; `policy ls` with the ACL rules' hit counters.
//!
//! An endpoint's rule list is its own policies, then its network's; of
//! rules of equal priority the one listed first wins, so an endpoint's own
//! rule beats its network's at the same priority.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::errors::{conflict, internal, invalid};
use super::state::{EndpointRecord, NetworkRecord, PolicyRecord};
use super::{new_id, ApiResult, Controller};
use crate::api::{self, ApiError, ErrorKind};
use crate::pipeline::{Guards, Layers};
use crate::policy::{parse_policy, Acl, AclAction, Policy, PolicyError};

/// ACL hit counts by (endpoint id, policy id) and, summed over a network's
/// endpoints, by (network id, policy id).
#[derive(Default)]
struct Hits<'a> {
    endpoint: HashMap<(&'a str, &'a str), u64>,
    network: HashMap<(&'a str, &'a str), u64>,
}

/// Whose policies a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// Index into the state's endpoints.
    Endpoint(usize),
    /// Index into the state's networks.
    Network(usize),
}

/// A policy error as an API error: the field is the request's `Policies`
/// with the document's JSON path behind it (`Policies[1].Settings.LocalPorts`).
fn policy_error(field: &str, e: PolicyError) -> ApiError {
    let path = if e.field.is_empty() || e.field.starts_with('[') {
        format!("{field}{}", e.field)
    } else {
        format!("{field}.{}", e.field)
    };
    invalid(&path, e.message)
}

/// The documents of a `Policies` value: one policy or a list of them.
fn documents(value: &Value, field: &str) -> ApiResult<Vec<(String, Value)>> {
    match value {
        Value::Array(items) if items.is_empty() => {
            Err(invalid(field, "the list of policies is empty"))
        }
        Value::Array(items) => Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{field}[{i}]"), v.clone()))
            .collect()),
        Value::Object(_) => Ok(vec![(field.to_owned(), value.clone())]),
        _ => Err(invalid(
            field,
            "expected an HNS policy ({\"Type\": ..., \"Settings\": {...}}) or a list of them",
        )),
    }
}

/// Parses every document, refusing what this switch cannot enforce where
/// they would apply: port mappings only on a nat network's endpoints,
/// OutBoundNAT only on l2bridge and l2tunnel networks (a nat network
/// translates everything already).
fn parse_all(
    docs: &[(String, Value)],
    nat_endpoint: bool,
    bridged: bool,
) -> ApiResult<Vec<Policy>> {
    let mut out = Vec::new();
    for (path, doc) in docs {
        let policy = parse_policy(doc, "").map_err(|e| policy_error(path, e))?;
        let refused = match &policy {
            Policy::PortMapping(_) if !nat_endpoint => {
                Some("a PortMapping belongs to an endpoint of a nat network")
            }
            Policy::OutBoundNat(o) if !bridged => {
                Some(if o.exceptions.iter().any(|p| p.addr.is_ipv6()) {
                    "OutBoundNAT translates IPv4 on l2bridge and l2tunnel networks"
                } else {
                    "OutBoundNAT belongs to an l2bridge or l2tunnel network (a nat network translates all outbound traffic)"
                })
            }
            _ => None,
        };
        if let Some(why) = refused {
            return Err(invalid(&format!("{path}.Type"), why));
        }
        out.push(policy);
    }
    Ok(out)
}

/// The key of a document's `Settings` (v2), matched case-insensitively as
/// HNS does; `None` in the v1 form.
fn settings_key(doc: &Value) -> Option<&str> {
    let top = doc.as_object()?;
    let key = top.keys().find(|k| k.eq_ignore_ascii_case("settings"))?;
    Some(key)
}

/// Sets `field` of a policy document (in `Settings` for the v2 form),
/// matching its name as HNS does, case-insensitively.
fn set_setting(doc: &mut Value, field: &str, value: Value) {
    let settings_key = settings_key(doc).map(str::to_owned);
    let Some(top) = doc.as_object_mut() else {
        return;
    };
    let obj = match settings_key {
        Some(k) => match top.get_mut(&k).and_then(Value::as_object_mut) {
            Some(o) => o,
            None => return,
        },
        None => top,
    };
    let key = obj
        .keys()
        .find(|k| k.eq_ignore_ascii_case(field))
        .cloned()
        .unwrap_or_else(|| field.to_owned());
    obj.insert(key, value);
}

/// The request field of a document's setting `field`: under its
/// `Settings` in the v2 form, beside `Type` in v1.
pub(super) fn setting_path(path: &str, doc: &Value, field: &str) -> String {
    match settings_key(doc) {
        Some(key) => format!("{path}.{key}.{field}"),
        None => format!("{path}.{field}"),
    }
}

/// A document's setting `field` (in `Settings` for the v2 form), matched
/// case-insensitively as HNS does.
pub(super) fn setting<'a>(doc: &'a Value, field: &str) -> Option<&'a Value> {
    let obj = match settings_key(doc) {
        Some(key) => doc.get(key)?.as_object()?,
        None => doc.as_object()?,
    };
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .map(|(_, v)| v)
}

fn parsed(records: &[PolicyRecord]) -> impl Iterator<Item = (&PolicyRecord, Policy)> + '_ {
    // Records were checked when added and again on load.
    records
        .iter()
        .filter_map(|r| parse_policy(&r.document, "").ok().map(|p| (r, p)))
}

fn acl_id(p: &Policy) -> Option<&str> {
    match p {
        Policy::Acl(Acl { id: Some(id), .. }) => Some(id),
        _ => None,
    }
}

impl Controller {
    /// Resolves `endpoint` / `network` to exactly one owner.
    pub(super) fn policy_owner(
        &self,
        endpoint: Option<&str>,
        network: Option<&str>,
    ) -> ApiResult<Owner> {
        match (endpoint, network) {
            (Some(_), Some(_)) => Err(invalid(
                "network",
                "give an endpoint or a network, not both",
            )),
            (None, None) => Err(invalid("endpoint", "give an endpoint or a network")),
            (Some(name), None) => {
                let i = self.state.endpoints.iter().position(|e| e.name == name);
                i.map(Owner::Endpoint).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::NotFound,
                        Some("endpoint"),
                        format!("no endpoint named '{name}'"),
                    )
                })
            }
            (None, Some(name)) => {
                let i = self.state.networks.iter().position(|n| n.name == name);
                i.map(Owner::Network).ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::NotFound,
                        Some("network"),
                        format!("no network named '{name}'"),
                    )
                })
            }
        }
    }

    /// Checks new policy documents for `owner` against what it (and every
    /// endpoint they would apply to) already has; returns them as records.
    /// `existing_endpoint` is for an endpoint being created (not in the
    /// state yet): its network's policies.
    pub(super) fn check_new_policies(
        &self,
        value: &Value,
        field: &str,
        owner: Option<Owner>,
        network_id: &str,
    ) -> ApiResult<Vec<PolicyRecord>> {
        let mut docs = documents(value, field)?;
        let net = self.state.network_by_id(network_id);
        let nat = net.is_some_and(|n| n.driver.wire_mac() == Some(crate::api::WireMac::Translated));
        let nat_endpoint = nat && !matches!(owner, Some(Owner::Network(_)));
        let bridged = net.is_some_and(|n| n.driver.wire_mac() == Some(crate::api::WireMac::Uplink));
        let policies = parse_all(&docs, nat_endpoint, bridged)?;
        let on_network = matches!(owner, Some(Owner::Network(_)));
        self.check_overlay_policies(&docs, &policies, on_network, net)?;
        // Mappings: a free external port (one picked for 0, written back
        // into the document so it is reported and kept).
        let mut taken: Vec<(u8, u16)> = Vec::new();
        for ((path, doc), policy) in docs.iter_mut().zip(&policies) {
            if let (Policy::PortMapping(m), Some(net)) = (policy, net) {
                let proto = match m.protocol {
                    crate::policy::L4::Tcp => 6,
                    crate::policy::L4::Udp => 17,
                };
                let port_field = format!("{path}.ExternalPort");
                let port = self.check_mapping(net, &port_field, proto, m.external_port, &taken)?;
                taken.push((proto, port));
                if port != m.external_port {
                    set_setting(doc, "ExternalPort", Value::from(port));
                }
            }
        }
        // Everything the new ones will sit beside, on any endpoint.
        let mut beside: Vec<&PolicyRecord> = net.iter().flat_map(|n| &n.policies).collect();
        match owner {
            Some(Owner::Endpoint(i)) => beside.extend(&self.state.endpoints[i].policies),
            Some(Owner::Network(_)) => beside.extend(
                self.state
                    .endpoints_of(network_id)
                    .flat_map(|e| &e.policies),
            ),
            None => {}
        }
        let old: Vec<(&PolicyRecord, Policy)> = beside
            .iter()
            .filter_map(|r| parse_policy(&r.document, "").ok().map(|p| (*r, p)))
            .collect();
        let old_ids: HashSet<&str> = old
            .iter()
            .flat_map(|(r, p)| [Some(r.id.as_str()), acl_id(p)])
            .flatten()
            .collect();
        let mut new_ids: HashSet<String> = HashSet::new();
        let mut records = Vec::new();
        let mut qos_seen = old.iter().any(|(_, p)| matches!(p, Policy::Qos(_)))
            && matches!(owner, Some(Owner::Endpoint(_)) | None);
        for ((path, doc), policy) in docs.iter().zip(&policies) {
            if let Policy::Qos(_) = policy {
                if qos_seen {
                    return Err(conflict(
                        &format!("{path}.Type"),
                        "the endpoint already has a QOS policy (its own or its network's); remove it first",
                    ));
                }
                qos_seen = true;
            }
            let id = match acl_id(policy) {
                Some(id) => {
                    let clash = old_ids.contains(id) || !new_ids.insert(id.to_owned());
                    if clash {
                        return Err(conflict(
                            &setting_path(path, doc, "Id"),
                            format!("an ACL with Id '{id}' already applies here"),
                        ));
                    }
                    id.to_owned()
                }
                None => new_id(),
            };
            records.push(PolicyRecord {
                id,
                document: doc.clone(),
            });
        }
        Ok(records)
    }

    pub(super) fn policy_add(&mut self, req: api::PolicyAdd) -> ApiResult<Vec<api::PolicyView>> {
        let owner = self.policy_owner(req.endpoint.as_deref(), req.network.as_deref())?;
        let network_id = match owner {
            Owner::Endpoint(i) => self.state.endpoints[i].network_id.clone(),
            Owner::Network(i) => self.state.networks[i].id.clone(),
        };
        let records =
            self.check_new_policies(&req.policies, "policies", Some(owner), &network_id)?;
        let before = self.state.clone();
        match owner {
            Owner::Endpoint(i) => self.state.endpoints[i].policies.extend(records.clone()),
            Owner::Network(i) => self.state.networks[i].policies.extend(records.clone()),
        }
        self.commit_policies(owner, before)?;
        tracing::info!(?owner, count = records.len(), "policies added");
        let hits = self.hits();
        Ok(records.iter().map(|r| self.view(r, owner, &hits)).collect())
    }

    pub(super) fn policy_remove(
        &mut self,
        endpoint: Option<&str>,
        network: Option<&str>,
        id: &str,
    ) -> ApiResult<api::Reply> {
        let owner = self.policy_owner(endpoint, network)?;
        let list = match owner {
            Owner::Endpoint(i) => &self.state.endpoints[i].policies,
            Owner::Network(i) => &self.state.networks[i].policies,
        };
        let Some(at) = list.iter().position(|r| r.id == id) else {
            let whose = match owner {
                Owner::Endpoint(i) => format!("endpoint '{}'", self.state.endpoints[i].name),
                Owner::Network(i) => format!("network '{}'", self.state.networks[i].name),
            };
            return Err(ApiError::new(
                ErrorKind::NotFound,
                Some("id"),
                format!("{whose} has no policy '{id}' (see vswitchctl policy ls)"),
            ));
        };
        let before = self.state.clone();
        match owner {
            Owner::Endpoint(i) => self.state.endpoints[i].policies.remove(at),
            Owner::Network(i) => self.state.networks[i].policies.remove(at),
        };
        self.commit_policies(owner, before)?;
        tracing::info!(?owner, id, "policy removed");
        Ok(api::Reply::Removed {
            name: id.to_owned(),
            warning: None,
        })
    }

    /// Pushes the changed owner's endpoints' layers and saves; on failure
    /// puts `before` back (state and datapath).
    pub(super) fn commit_policies(&mut self, owner: Owner, before: super::State) -> ApiResult<()> {
        let affected: Vec<String> = match owner {
            Owner::Endpoint(i) => vec![self.state.endpoints[i].id.clone()],
            Owner::Network(i) => self
                .state
                .endpoints_of(&self.state.networks[i].id)
                .map(|e| e.id.clone())
                .collect(),
        };
        let net_id = match owner {
            Owner::Endpoint(i) => self.state.endpoints[i].network_id.clone(),
            Owner::Network(i) => self.state.networks[i].id.clone(),
        };
        let result = affected
            .iter()
            .try_for_each(|id| self.push_layers(id))
            .and_then(|()| match self.state.network_by_id(&net_id).cloned() {
                Some(net) => self.push_nat(&net).and_then(|()| self.overlay_sync(&net)),
                None => Ok(()),
            })
            .and_then(|()| self.save());
        if let Err(e) = result {
            self.state = before;
            for id in &affected {
                let _ = self.push_layers(id);
            }
            if let Some(net) = self.state.network_by_id(&net_id).cloned() {
                let _ = self.push_nat(&net);
                let _ = self.overlay_sync(&net);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Compiles an endpoint's policies (its own, then its network's).
    /// Returns the layers and, per ACL rule, the id of its policy.
    pub(super) fn layers_of(&self, ep: &EndpointRecord) -> (Layers, Vec<String>) {
        let net = self.state.network_by_id(&ep.network_id);
        let own = parsed(&ep.policies);
        let theirs = net
            .into_iter()
            .flat_map(|n: &NetworkRecord| parsed(&n.policies));
        let mut rules = Vec::new();
        let mut ids = Vec::new();
        let mut qos = None;
        for (record, policy) in own.chain(theirs) {
            match policy {
                Policy::Acl(mut acl) => {
                    acl.id.get_or_insert_with(|| record.id.clone());
                    rules.push(acl);
                    ids.push(record.id.clone());
                }
                Policy::Qos(q) => {
                    qos.get_or_insert(q.max_bytes_per_second);
                }
                Policy::PortMapping(_)
                | Policy::OutBoundNat(_)
                | Policy::RemoteSubnetRoute(_)
                | Policy::ProviderAddress(_) => {}
            }
        }
        let guards = Guards {
            dhcp: ep.dhcp_guard,
            router: ep.router_guard,
        };
        let default = if ep.default_block {
            AclAction::Block
        } else {
            AclAction::Allow
        };
        (Layers::new(guards, &rules, default, qos), ids)
    }

    /// Sends an endpoint's layers to the datapath (if it has a port),
    /// carrying over the hit counts of rules it keeps.
    pub(super) fn push_layers(&mut self, endpoint_id: &str) -> ApiResult<()> {
        let Some(ep) = self.state.endpoints.iter().find(|e| e.id == endpoint_id) else {
            return Ok(());
        };
        let (layers, ids) = self.layers_of(ep);
        let Some(rt) = self.endpoints.get_mut(endpoint_id) else {
            return Ok(());
        };
        let Some(port) = rt.port.as_mut() else {
            return Ok(());
        };
        for (i, id) in ids.iter().enumerate() {
            if let Some(j) = port.rule_ids.iter().position(|old| old == id) {
                let old = port.layers.hits[j].load(Ordering::Relaxed);
                layers.hits[i].store(old, Ordering::Relaxed);
            }
        }
        self.datapath
            .set_layers(port.id, layers.clone())
            .map_err(internal)?;
        port.layers = layers.clone();
        port.rule_ids = ids;
        let ep = ep.clone();
        self.fast_sync(&ep, &layers)
    }

    /// Every ACL policy's hits, over every endpoint using it: one pass, so
    /// listing 10,000 rules is not 10,000 passes. Counted per owner, not
    /// per id alone: two endpoints may each have an ACL of the same `Id`
    /// (ids are unique only among the policies that apply to one
    /// endpoint), and each has its own count.
    fn hits(&self) -> Hits<'_> {
        let mut out = Hits::default();
        for ep in &self.state.endpoints {
            let Some(p) = self.endpoints.get(&ep.id).and_then(|rt| rt.port.as_ref()) else {
                continue;
            };
            for (id, h) in p.rule_ids.iter().zip(p.layers.hits.iter()) {
                let n = h.load(Ordering::Relaxed);
                *out.endpoint.entry((&ep.id, id)).or_default() += n;
                *out.network.entry((&ep.network_id, id)).or_default() += n;
            }
        }
        out
    }

    fn view(&self, r: &PolicyRecord, owner: Owner, hits: &Hits<'_>) -> api::PolicyView {
        let policy = parse_policy(&r.document, "").ok();
        let is_acl = matches!(policy, Some(Policy::Acl(_)));
        let (endpoint, network, count) = match owner {
            Owner::Endpoint(i) => {
                let ep = &self.state.endpoints[i];
                let count = hits.endpoint.get(&(ep.id.as_str(), r.id.as_str()));
                (Some(ep.name.clone()), None, count)
            }
            Owner::Network(i) => {
                let net = &self.state.networks[i];
                let count = hits.network.get(&(net.id.as_str(), r.id.as_str()));
                (None, Some(net.name.clone()), count)
            }
        };
        api::PolicyView {
            id: r.id.clone(),
            kind: policy.map_or("?", |p| p.kind()).to_owned(),
            endpoint,
            network,
            settings: r.document.clone(),
            hits: is_acl.then(|| count.copied().unwrap_or(0)),
        }
    }

    /// The policies of `owner` (for an endpoint: its own and its
    /// network's), or of everything.
    pub(super) fn policy_views(&self, owner: Option<Owner>) -> Vec<api::PolicyView> {
        let mut out = Vec::new();
        let hits = self.hits();
        let hits = &hits;
        let net_of = |id: &str| self.state.networks.iter().position(|n| n.id == id);
        match owner {
            Some(Owner::Endpoint(i)) => {
                let ep = &self.state.endpoints[i];
                out.extend(
                    ep.policies
                        .iter()
                        .map(|r| self.view(r, Owner::Endpoint(i), hits)),
                );
                if let Some(n) = net_of(&ep.network_id) {
                    let net = &self.state.networks[n];
                    out.extend(
                        net.policies
                            .iter()
                            .map(|r| self.view(r, Owner::Network(n), hits)),
                    );
                }
            }
            Some(Owner::Network(n)) => {
                let net = &self.state.networks[n];
                out.extend(
                    net.policies
                        .iter()
                        .map(|r| self.view(r, Owner::Network(n), hits)),
                );
            }
            None => {
                for (n, net) in self.state.networks.iter().enumerate() {
                    out.extend(
                        net.policies
                            .iter()
                            .map(|r| self.view(r, Owner::Network(n), hits)),
                    );
                }
                for (i, ep) in self.state.endpoints.iter().enumerate() {
                    out.extend(
                        ep.policies
                            .iter()
                            .map(|r| self.view(r, Owner::Endpoint(i), hits)),
                    );
                }
            }
        }
        out
    }

    pub(super) fn policy_list(
        &self,
        endpoint: Option<&str>,
        network: Option<&str>,
    ) -> ApiResult<Vec<api::PolicyView>> {
        let owner = match (endpoint, network) {
            (None, None) => None,
            _ => Some(self.policy_owner(endpoint, network)?),
        };
        Ok(self.policy_views(owner))
    }

    /// `endpoint set`: checked whole, then applied to the datapath and
    /// saved; undone if either fails.
    pub(super) fn endpoint_set(&mut self, req: api::EndpointSet) -> ApiResult<api::Endpoint> {
        let i = self
            .state
            .endpoints
            .iter()
            .position(|e| e.name == req.name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    Some("name"),
                    format!("no endpoint named '{}'", req.name),
                )
            })?;
        let default_block = match req.default_acl_action.as_deref() {
            None => None,
            Some(a) if a.eq_ignore_ascii_case("allow") => Some(false),
            Some(a) if a.eq_ignore_ascii_case("block") => Some(true),
            Some(a) => {
                return Err(invalid(
                    "default_acl_action",
                    format!("'{a}' is not an action; expected Allow or Block"),
                ))
            }
        };
        let mirror = match req.mirror.as_deref() {
            None => None,
            Some(m) => Some(
                m.parse::<api::PortMirroring>()
                    .map_err(|e| invalid("mirror", e))?,
            ),
        };
        if mirror.is_some() {
            let switched = self
                .state
                .network_by_id(&self.state.endpoints[i].network_id)
                .is_some_and(|n| n.driver.switched());
            if !switched {
                return Err(invalid(
                    "mirror",
                    "the endpoint has no port to mirror (its network's driver gives loopback only)",
                ));
            }
        }
        if req.allow_spoofing.is_none()
            && req.dhcp_guard.is_none()
            && req.router_guard.is_none()
            && default_block.is_none()
            && mirror.is_none()
        {
            return Err(invalid("name", "nothing to set: give at least one setting"));
        }
        let before = self.state.clone();
        let ep = &mut self.state.endpoints[i];
        let spoofing_changed = req.allow_spoofing.is_some_and(|a| a != ep.allow_spoofing);
        ep.allow_spoofing = req.allow_spoofing.unwrap_or(ep.allow_spoofing);
        ep.dhcp_guard = req.dhcp_guard.unwrap_or(ep.dhcp_guard);
        ep.router_guard = req.router_guard.unwrap_or(ep.router_guard);
        ep.default_block = default_block.unwrap_or(ep.default_block);
        let mirror_changed = mirror.is_some_and(|m| m != ep.mirror);
        ep.mirror = mirror.unwrap_or(ep.mirror);
        let ep = ep.clone();
        let result = (|| {
            if spoofing_changed {
                if let Some(port) = self.endpoints.get(&ep.id).and_then(|rt| rt.port.as_ref()) {
                    self.datapath
                        .set_security(port.id, super::endpoints::security_of(&ep))
                        .map_err(internal)?;
                }
            }
            if mirror_changed {
                // The datapath first: from here no flow of a source is
                // offloaded, and push_layers' fast_sync marks it slow.
                if let Some(port) = self.endpoints.get(&ep.id).and_then(|rt| rt.port.as_ref()) {
                    self.datapath
                        .set_port_mirror(port.id, ep.mirror)
                        .map_err(internal)?;
                }
            }
            self.push_layers(&ep.id)?;
            self.save()
        })();
        if let Err(e) = result {
            self.state = before;
            let old = self.state.endpoints[i].clone();
            if let Some(port) = self.endpoints.get(&old.id).and_then(|rt| rt.port.as_ref()) {
                let _ = self
                    .datapath
                    .set_security(port.id, super::endpoints::security_of(&old));
                let _ = self.datapath.set_port_mirror(port.id, old.mirror);
            }
            let _ = self.push_layers(&old.id);
            return Err(e);
        }
        tracing::info!(endpoint = %ep.name, allow_spoofing = ep.allow_spoofing, dhcp_guard = ep.dhcp_guard,
            router_guard = ep.router_guard, default_block = ep.default_block, mirror = %ep.mirror, "endpoint settings changed");
        Ok(self.endpoint_view(&ep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_take_one_or_a_list() {
        let one = json!({"Type": "ACL"});
        assert_eq!(documents(&one, "Policies").unwrap()[0].0, "Policies");
        let two = json!([{"Type": "ACL"}, {"Type": "QOS"}]);
        assert_eq!(documents(&two, "Policies").unwrap()[1].0, "Policies[1]");
        assert_eq!(
            documents(&json!([]), "Policies")
                .unwrap_err()
                .field
                .as_deref(),
            Some("Policies")
        );
        assert!(documents(&json!("ACL"), "Policies").is_err());
    }

    #[test]
    fn errors_name_the_request_field_and_the_json_path() {
        let docs = documents(
            &json!([{"Type": "ACL", "Settings": {"Action": "Allow", "Direction": "In", "Protocols": "6", "LocalPorts": "70000"}}]),
            "Policies",
        )
        .unwrap();
        let e = parse_all(&docs, false, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("Policies[0].Settings.LocalPorts"));
        let nat = documents(
            &json!({"Type": "PortMapping", "Settings": {"Protocol": 6, "InternalPort": 80, "ExternalPort": 8080}}),
            "Policies",
        )
        .unwrap();
        let e = parse_all(&nat, false, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("Policies.Type"));
        assert!(e.message.contains("nat network"), "{}", e.message);
        assert!(parse_all(&nat, true, false).is_ok());
        let mut doc = json!({"type": "PortMapping", "settings": {"externalport": 0}});
        set_setting(&mut doc, "ExternalPort", json!(61001));
        assert_eq!(doc["settings"]["externalport"], 61001);
    }
}

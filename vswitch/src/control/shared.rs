//! Overlay networks across hosts: what this host publishes to the shared
//! store (etcd, [`crate::overlay::store`]) and what it takes from it.
//!
//! Published: overlay networks created here (their create request, less
//! the host's own `interface`), and one CA->PA mapping per address of each
//! overlay endpoint here, claimed by transaction before the endpoint is
//! plumbed (an address another host holds is refused). Taken: networks
//! other hosts defined (created here, with this host's provider address)
//! and their mappings, which become the "remote" entries of the CA->PA
//! table. With etcd out of reach, the host keeps forwarding with what it
//! knows; changes are queued by the store and published when it returns,
//! and the snapshot it then takes brings across what others changed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::errors::conflict;
use super::overlay::RemoteMapping;
use super::state::{EndpointRecord, NetworkRecord};
use super::{ApiResult, Controller};
use crate::api::{self, ApiError, ErrorKind};
use crate::overlay::store::{Claim, Event, Mapping, SharedNetwork, Store, StoreError};
use crate::wire::MacAddr;

/// This host in the shared store.
pub struct Shared {
    pub store: Store,
    pub host_id: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

fn store_error(field: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::Taken { host } => conflict(
            field,
            format!("the address is another host's on this overlay network (host '{host}')"),
        ),
        StoreError::Invalid(m) => ApiError::new(ErrorKind::InvalidArgument, Some(field), m),
        StoreError::Unavailable(m) => ApiError::new(ErrorKind::Unavailable, Some(field), m),
    }
}

impl Controller {
    /// Connects this controller to the shared store (once, at start).
    pub fn set_shared(&mut self, shared: Shared) {
        self.shared = Some(shared);
        // Endpoints restored before the store was there claim their
        // addresses now (the store publishes when it can).
        let eps: Vec<EndpointRecord> = self.state.endpoints.clone();
        for ep in &eps {
            if let Err(e) = self.claim_endpoint(ep) {
                tracing::warn!(endpoint = %ep.name, error = %e, "address not published");
            }
        }
        let nets: Vec<NetworkRecord> = self.state.networks.clone();
        for net in nets.iter().filter(|n| n.driver.tunnel()) {
            self.publish_network(net);
        }
    }

    /// Stops the store: a clean stop revokes this host's lease, so the
    /// others drop its mappings at once.
    pub fn stop_shared(&mut self) {
        if let Some(s) = self.shared.take() {
            s.store.stop();
        }
    }

    /// The network as other hosts should create it: the request it was
    /// made from, without what is this host's own.
    fn shared_spec(net: &NetworkRecord) -> serde_json::Value {
        let mut options = net.options.clone();
        options.remove("interface");
        let mut req = api::NetworkCreate {
            name: net.name.clone(),
            driver: net.driver.name().into(),
            mtu: Some(net.mtu),
            options,
            ..Default::default()
        };
        for (s, g) in [
            (
                net.subnet4.map(|s| s.to_string()),
                net.gateway4.map(|g| g.to_string()),
            ),
            (
                net.subnet6.map(|s| s.to_string()),
                net.gateway6.map(|g| g.to_string()),
            ),
        ] {
            req.subnets.extend(s);
            req.gateways.extend(g);
        }
        serde_json::to_value(req).unwrap_or_default()
    }

    pub(super) fn publish_network(&self, net: &NetworkRecord) {
        let Some(s) = &self.shared else { return };
        if !net.driver.tunnel() {
            return;
        }
        let shared = SharedNetwork {
            name: net.name.clone(),
            spec: Controller::shared_spec(net),
        };
        if let Err(e) = s.store.put_network(&shared) {
            tracing::warn!(network = %net.name, error = %e, "network not published");
        }
    }

    pub(super) fn unpublish_network(&self, net: &NetworkRecord) {
        let Some(s) = &self.shared else { return };
        if net.driver.tunnel() {
            if let Err(e) = s.store.delete_network(&net.name) {
                tracing::warn!(network = %net.name, error = %e, "network not unpublished");
            }
        }
    }

    /// The mappings of an overlay endpoint here, as published.
    fn published_of(&self, ep: &EndpointRecord) -> Vec<Mapping> {
        let (Some(s), Some(net)) = (&self.shared, self.state.network_by_id(&ep.network_id)) else {
            return Vec::new();
        };
        let (Some(vsid), Some(pa)) = (net.parsed.vsid, self.host_pa(net)) else {
            return Vec::new();
        };
        super::endpoints::endpoint_ips(ep)
            .into_iter()
            .map(|ca| Mapping {
                vsid,
                ca,
                mac: ep.mac.0,
                pa,
                host: s.host_id.clone(),
            })
            .collect()
    }

    fn host_pa(&self, net: &NetworkRecord) -> Option<std::net::Ipv4Addr> {
        self.nets
            .get(&net.id)
            .and_then(|rt| rt.overlay.as_ref())
            .map(|t| t.pa)
            .or(self.overlay.provider_address)
    }

    /// Claims an overlay endpoint's addresses for this host; refused when
    /// another host holds one (what was claimed is given back).
    pub(super) fn claim_endpoint(&self, ep: &EndpointRecord) -> ApiResult<()> {
        let Some(s) = &self.shared else {
            return Ok(());
        };
        let mut done = Vec::new();
        for m in self.published_of(ep) {
            let field = if m.ca.is_ipv4() { "ip" } else { "ipv6" };
            match s.store.claim(&m) {
                Ok(Claim::Granted) => done.push(m),
                Ok(Claim::Queued) => {
                    // The store said etcd is out of reach once already.
                    tracing::info!(endpoint = %ep.name, ca = %m.ca, "address queued: published when etcd answers");
                    done.push(m);
                }
                Err(e) => {
                    for m in done {
                        let _ = s.store.release(m.vsid, m.ca);
                    }
                    return Err(store_error(field, e));
                }
            }
        }
        Ok(())
    }

    pub(super) fn release_endpoint(&self, ep: &EndpointRecord) {
        let Some(s) = &self.shared else { return };
        for m in self.published_of(ep) {
            if let Err(e) = s.store.release(m.vsid, m.ca) {
                tracing::warn!(endpoint = %ep.name, ca = %m.ca, error = %e, "address not released");
            }
        }
    }

    /// Takes one event of the shared store.
    pub fn apply_shared(&mut self, ev: Event) {
        let host = match &self.shared {
            Some(s) => s.host_id.clone(),
            None => return,
        };
        match ev {
            Event::Connected(up) => {
                self.overlay.store_connected = up;
                tracing::info!(connected = up, "overlay store");
            }
            Event::Conflict { vsid, ca, host } => {
                tracing::error!(vsid, %ca, holder = %host, "an endpoint's address here is another host's in etcd: not published");
            }
            Event::Snapshot { networks, mappings } => {
                for n in networks {
                    self.adopt_network(n);
                }
                let mut remote: std::collections::HashMap<u32, BTreeMap<IpAddr, RemoteMapping>> =
                    Default::default();
                for m in mappings.into_iter().filter(|m| m.host != host) {
                    remote.entry(m.vsid).or_default().insert(
                        m.ca,
                        RemoteMapping {
                            mac: MacAddr(m.mac),
                            pa: m.pa,
                            host: m.host,
                        },
                    );
                }
                self.overlay.remote = remote;
                self.sync_overlays(None);
            }
            Event::NetworkPut(n) => self.adopt_network(n),
            Event::NetworkGone(name) => self.forget_network(&name),
            Event::MappingPut(m) if m.host != host => {
                let vsid = m.vsid;
                self.overlay.remote.entry(vsid).or_default().insert(
                    m.ca,
                    RemoteMapping {
                        mac: MacAddr(m.mac),
                        pa: m.pa,
                        host: m.host,
                    },
                );
                self.sync_overlays(Some(vsid));
            }
            Event::MappingPut(_) => {}
            Event::MappingGone { vsid, ca } => {
                let gone = self
                    .overlay
                    .remote
                    .get_mut(&vsid)
                    .and_then(|t| t.remove(&ca))
                    .is_some();
                if gone {
                    self.sync_overlays(Some(vsid));
                }
            }
        }
    }

    /// Brings the overlay networks (of `vsid`, or all) to their tables.
    fn sync_overlays(&mut self, vsid: Option<u32>) {
        let nets: Vec<NetworkRecord> = self
            .state
            .networks
            .iter()
            .filter(|n| n.driver.tunnel() && vsid.is_none_or(|v| n.parsed.vsid == Some(v)))
            .cloned()
            .collect();
        for net in nets {
            if let Err(e) = self.overlay_sync(&net) {
                tracing::warn!(network = %net.name, error = %e, "mappings not applied");
            }
        }
    }

    /// A network another host defined: created here unless one of that
    /// name exists (a different one is left alone, and said so).
    fn adopt_network(&mut self, n: SharedNetwork) {
        let req: api::NetworkCreate = match serde_json::from_value(n.spec) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(network = %n.name, error = %e, "shared network definition not understood");
                return;
            }
        };
        if let Some(local) = self.state.network(&req.name) {
            if local.driver.name() != req.driver
                || local.parsed.vsid.map(|v| v.to_string()).as_deref()
                    != req.options.get("vsid").map(String::as_str)
            {
                tracing::warn!(network = %req.name, "a network of this name here differs from the shared one: kept as it is");
            }
            return;
        }
        if Some(req.driver.as_str()) != Some(api::Driver::Overlay.name()) {
            return;
        }
        let name = req.name.clone();
        match self.network_create(req) {
            Ok(_) => tracing::info!(network = %name, "network created from the overlay store"),
            Err(e) => {
                tracing::warn!(network = %name, error = %e, "shared network not created here")
            }
        }
    }

    /// A network another host removed: removed here too when it has no
    /// endpoints here.
    fn forget_network(&mut self, name: &str) {
        let Some(net) = self.state.network(name).cloned() else {
            return;
        };
        if !net.driver.tunnel() {
            return;
        }
        if self.state.endpoints_of(&net.id).next().is_some() {
            tracing::warn!(network = %name, "removed from the overlay store, kept here: it has endpoints");
            return;
        }
        match self.network_remove_local(name) {
            Ok(_) => tracing::info!(network = %name, "network removed by the overlay store"),
            Err(e) => tracing::warn!(network = %name, error = %e, "network not removed"),
        }
    }
}

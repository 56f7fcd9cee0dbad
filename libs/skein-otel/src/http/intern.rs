//! Attribute values that repeat from request to request, made once instead of on every
//! request: span names and `http.route` per route template, and the last few `Host`,
//! `User-Agent` and client address values seen by each thread.
//!
//! A span keeps its attribute values until the batch processor has exported it, on another
//! thread; every owned string is one allocation on the request path and one free on the
//! exporter's thread. Static and reference-counted values avoid both.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, RwLock};

use opentelemetry::Value;
use rustc_hash::FxHashMap as HashMap;

use super::METHOD_NAMES;

/// The names of one route template, made once per process (a router has a fixed set of
/// templates, so these are leaked on purpose and bounded by [`MAX_ROUTES`]).
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) route: &'static str,
    /// `{METHOD} {route}` for each of [`METHOD_NAMES`].
    names: [&'static str; METHOD_NAMES.len()],
}

impl Route {
    /// The span name for the method numbered `method` by [`super::method_index`].
    pub(crate) fn name(&self, method: usize) -> &'static str {
        self.names[method]
    }
}

/// More route templates (or gRPC methods) than any real service has: past this, names are
/// built per request (so a `MatchedPath` or gRPC path filled from request data could not grow
/// memory without bound).
const MAX_ROUTES: usize = 4096;

/// Names made once per process, found by their text: a map shared by every thread, in front
/// of which each thread keeps its own copy (no lock on the request path once warm).
type Names<T> = HashMap<Box<str>, &'static T>;

static ROUTES: LazyLock<RwLock<Names<Route>>> = LazyLock::new(Default::default);
#[cfg_attr(not(feature = "tonic"), allow(dead_code))]
static RPC_METHODS: LazyLock<RwLock<Names<str>>> = LazyLock::new(Default::default);

thread_local! {
    static LOCAL_ROUTES: RefCell<Names<Route>> = RefCell::new(HashMap::default());
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))]
    static LOCAL_RPC_METHODS: RefCell<Names<str>> = RefCell::new(HashMap::default());
    static HOSTS: RefCell<Recent<()>> = const { RefCell::new(Recent::new()) };
    static USER_AGENTS: RefCell<Recent<()>> = const { RefCell::new(Recent::new()) };
    static CLIENTS: RefCell<Recent<()>> = const { RefCell::new(Recent::new()) };
    static CLIENT_IPS: RefCell<Recent<IpAddr>> = const { RefCell::new(Recent::new()) };
}

/// The value named `text`, made by `make` (and leaked) the first time any thread asks; `None`
/// once [`MAX_ROUTES`] values have been made.
fn intern<T: ?Sized + Sync + 'static>(
    local: &'static std::thread::LocalKey<RefCell<Names<T>>>,
    shared: &RwLock<Names<T>>,
    text: &str,
    make: impl FnOnce(&'static str) -> &'static T,
) -> Option<&'static T> {
    if let Some(v) = local.with_borrow(|local| local.get(text).copied()) {
        return Some(v);
    }
    let known = shared.read().unwrap_or_else(|e| e.into_inner()).get(text).copied();
    let v = match known {
        Some(v) => v,
        None => {
            let mut all = shared.write().unwrap_or_else(|e| e.into_inner());
            match all.get(text) {
                Some(v) => v,
                None if all.len() >= MAX_ROUTES => return None,
                None => {
                    let v = make(Box::leak(text.into()));
                    all.insert(text.into(), v);
                    v
                }
            }
        }
    };
    local.with_borrow_mut(|local| local.insert(text.into(), v));
    Some(v)
}

/// The names of `route`, or `None` once [`MAX_ROUTES`] templates have been seen.
pub(crate) fn route(route: &str) -> Option<&'static Route> {
    intern(&LOCAL_ROUTES, &ROUTES, route, |template| {
        let names = METHOD_NAMES.map(|m| &*Box::leak(format!("{m} {template}").into_boxed_str()));
        Box::leak(Box::new(Route { route: template, names }))
    })
}

/// A gRPC method (`package.Service/Method`), the span name and `rpc.method` of its calls, or
/// `None` once [`MAX_ROUTES`] methods have been seen.
#[cfg_attr(not(feature = "tonic"), allow(dead_code))]
pub(crate) fn rpc_method(method: &str) -> Option<&'static str> {
    intern(&LOCAL_RPC_METHODS, &RPC_METHODS, method, |m| m)
}

/// `server.address` from the `Host` header: shared with earlier requests to the same host.
pub(crate) fn host(value: &str) -> Value {
    HOSTS.with_borrow_mut(|recent| recent.get(value)).into()
}

/// `user_agent.original`: shared with earlier requests from the same client software.
pub(crate) fn user_agent(value: &str) -> Value {
    USER_AGENTS.with_borrow_mut(|recent| recent.get(value)).into()
}

/// `client.address` from `X-Forwarded-For`: shared with earlier requests from that client.
pub(crate) fn client(value: &str) -> Value {
    CLIENTS.with_borrow_mut(|recent| recent.get(value)).into()
}

/// `client.address` from the connection's peer: formatted once per recent peer, not per request.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn client_ip(ip: IpAddr) -> Value {
    CLIENT_IPS.with_borrow_mut(|recent| recent.get(ip)).into()
}

/// The last few distinct values seen, by key (`()` when the text is its own key), with their
/// text; replaced round-robin.
struct Recent<K> {
    values: [Option<(K, Arc<str>)>; 8],
    next: usize,
}

impl<K> Recent<K> {
    const fn new() -> Self {
        Recent { values: [const { None }; 8], next: 0 }
    }

    /// The text of the entry `is` picks, or the one `make` makes (which then replaces the
    /// oldest entry).
    fn find_or(&mut self, is: impl Fn(&K, &str) -> bool, make: impl FnOnce() -> (K, Arc<str>)) -> Arc<str> {
        if let Some((_, text)) = self.values.iter().flatten().find(|(k, text)| is(k, text)) {
            return Arc::clone(text);
        }
        let (key, text) = make();
        self.values[self.next] = Some((key, Arc::clone(&text)));
        self.next = (self.next + 1) % self.values.len();
        text
    }
}

impl Recent<()> {
    fn get(&mut self, value: &str) -> Arc<str> {
        self.find_or(|(), text| text == value, || ((), value.into()))
    }
}

impl Recent<IpAddr> {
    fn get(&mut self, ip: IpAddr) -> Arc<str> {
        self.find_or(|seen, _| *seen == ip, || (ip, ip.to_string().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_made_once_and_shared() {
        let a = route("/intern-test/{id}").unwrap();
        let b = route("/intern-test/{id}").unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.route, "/intern-test/{id}");
        let name = |m: &str| a.name(super::super::method_index(&m.parse().unwrap()));
        assert_eq!(name("GET"), "GET /intern-test/{id}");
        assert_eq!(name("PATCH"), "PATCH /intern-test/{id}");
        assert_eq!(name("PURGE"), "_OTHER /intern-test/{id}");
        // Another thread finds the same names.
        let c = std::thread::spawn(|| route("/intern-test/{id}").unwrap() as *const Route as usize)
            .join()
            .unwrap();
        assert_eq!(c, a as *const Route as usize);
    }

    #[test]
    fn rpc_methods_are_made_once_and_shared() {
        let a = rpc_method("intern.Test/Call").unwrap();
        assert_eq!(a, "intern.Test/Call");
        assert!(std::ptr::eq(a, rpc_method("intern.Test/Call").unwrap()));
        let b =
            std::thread::spawn(|| rpc_method("intern.Test/Call").unwrap().as_ptr() as usize).join().unwrap();
        assert_eq!(b, a.as_ptr() as usize);
        assert_ne!(rpc_method("intern.Test/Other").unwrap(), a);
    }

    #[test]
    fn recent_values_are_shared_and_bounded() {
        let mut recent = Recent::<()>::new();
        let a = recent.get("api.local");
        assert!(Arc::ptr_eq(&a, &recent.get("api.local")));
        for i in 0..100 {
            assert_eq!(&*recent.get(&format!("host-{i}")), format!("host-{i}"));
        }
        assert_eq!(recent.values.iter().flatten().count(), 8);
        // Evicted values are made again, equal.
        assert_eq!(&*recent.get("api.local"), "api.local");
    }

    #[test]
    fn recent_peer_addresses_are_formatted_once_and_bounded() {
        let mut recent = Recent::<IpAddr>::new();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = recent.get(ip);
        assert_eq!(&*a, "10.1.2.3");
        assert!(Arc::ptr_eq(&a, &recent.get(ip)));
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(&*recent.get(v6), "::1");
        for i in 0..50u8 {
            let ip = IpAddr::from([192, 168, 0, i]);
            assert_eq!(*recent.get(ip), *ip.to_string());
        }
        assert_eq!(recent.values.iter().flatten().count(), 8);
        assert_eq!(&*recent.get(ip), "10.1.2.3", "evicted, made again");
    }
}

//! Reading a few interfaces instead of the whole host: after a change only the
//! dirty interfaces are re-read, so the cost follows the change, not the number of
//! links. Per interface: RTM_GETLINK for its index and an address dump filtered by
//! its index; per read, one dump of the main IPv4 route table (filtered dumps need
//! NETLINK_GET_STRICT_CHK, Linux 4.20). The route dump is not filtered by output
//! interface: the kernel walks the whole table for each filtered dump anyway.

use std::collections::BTreeSet;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::route::{RouteHeader, RouteMessage};
use tracing::debug;

use super::dump::DumpSocket;
use super::{Kernel, NetlinkError, convert, dump_retrying, link_query};
use crate::model::Snapshot;

impl Kernel {
    /// Links, addresses (v4, v6) and, with `routes`, main-table IPv4 default routes
    /// of `indexes` only; an index whose link is gone is simply absent. `None` when
    /// this kernel cannot filter dumps (the caller then reads everything).
    pub async fn dump_some(
        &self,
        indexes: &BTreeSet<u32>,
        routes: bool,
    ) -> Result<Option<Snapshot>, NetlinkError> {
        let mut turn = self.strict.lock().await;
        let mut sock = match turn.take() {
            Some(s) => s,
            None => match DumpSocket::open_strict() {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "no strict netlink checking; reading everything instead");
                    return Ok(None);
                }
            },
        };
        let mut snap = Snapshot::default();
        for &index in indexes {
            read_one(&mut sock, index, &mut snap).await?;
        }
        if routes {
            read_default_routes(&mut sock, indexes, &mut snap).await?;
        }
        *turn = Some(sock);
        Ok(Some(snap))
    }
}

async fn read_one(
    sock: &mut DumpSocket,
    index: u32,
    snap: &mut Snapshot,
) -> Result<(), NetlinkError> {
    let reply = sock
        .get(RouteNetlinkMessage::GetLink(link_query(index)))
        .await
        .map_err(|error| NetlinkError::Dump {
            what: "links",
            error,
        })?;
    let Some(RouteNetlinkMessage::NewLink(l)) = reply else {
        // Gone: no addresses or routes to read either.
        return Ok(());
    };
    snap.links.extend(convert::link(&l));

    let mut query = AddressMessage::default();
    query.header.index = index;
    let mut addrs = (Vec::new(), Vec::new());
    dump_retrying(
        sock,
        "addresses",
        || RouteNetlinkMessage::GetAddress(query.clone()),
        &mut addrs,
        |msg, (v4, v6)| {
            if let RouteNetlinkMessage::NewAddress(a) = msg {
                // The filter is the kernel's; checked again so a kernel that ignored
                // it cannot give this interface another's addresses.
                if a.header.index != index {
                    return;
                }
                match convert::address(&a) {
                    Some(convert::Addr::V4(a)) => v4.push(a),
                    Some(convert::Addr::V6(a)) => v6.push(a),
                    None => {}
                }
            }
        },
    )
    .await?;
    snap.addrs4.extend(addrs.0);
    snap.addrs6.extend(addrs.1);

    Ok(())
}

/// The main-table IPv4 default routes through any of `indexes`.
async fn read_default_routes(
    sock: &mut DumpSocket,
    indexes: &BTreeSet<u32>,
    snap: &mut Snapshot,
) -> Result<(), NetlinkError> {
    // Only the fields that filter are set: family and table.
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    query.header.table = RouteHeader::RT_TABLE_MAIN;
    let mut routes = Vec::new();
    dump_retrying(
        sock,
        "routes",
        || RouteNetlinkMessage::GetRoute(query.clone()),
        &mut routes,
        |msg, routes| {
            if let RouteNetlinkMessage::NewRoute(r) = msg {
                let mine = convert::default_routes(&r)
                    .into_iter()
                    .filter(|r| indexes.contains(&r.oif));
                routes.extend(mine);
            }
        },
    )
    .await?;
    snap.routes = routes;
    Ok(())
}

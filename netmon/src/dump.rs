//! `netmon dump [--json]`: read the kernel once and print what netmon would report.

use std::io::Write;

use anyhow::Context;
use ipc::{Discovery, Event, EventKind, Interface, LinkType, PROTOCOL_VERSION, Status};

use crate::filter::Filter;
use crate::model::{build, sysfs_is_wireless};
use crate::netlink::Kernel;

/// Reads links, addresses and routes once; prints an aligned table, or with `json` a
/// `network_discovery` event exactly as a fresh netmon would send it (version 1, a
/// random instance id, seq 1, timestamps). The filter applies.
pub async fn run_dump(filter: &Filter, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let kernel = Kernel::open_dump_only().context("open netlink")?;
    let snapshot = kernel
        .dump()
        .await
        .context("read the kernel's interfaces")?;
    let now = ipc::timestamp_now();
    let interfaces: Vec<Interface> = build(&snapshot, filter, &sysfs_is_wireless)
        .into_values()
        .map(|mut i| {
            i.timestamp = Some(now.clone());
            i
        })
        .collect();
    if json {
        let event = Event {
            kind: EventKind::NetworkDiscovery(Discovery {
                interfaces,
                timestamp: Some(now),
            }),
            version: Some(PROTOCOL_VERSION),
            instance: Some(format!("{:08x}", fastrand::u32(..))),
            seq: Some(1),
        };
        let line = serde_json::to_string(&event).context("encode the discovery event")?;
        writeln!(out, "{line}").context("write to stdout")?;
    } else {
        write_table(&interfaces, out).context("write to stdout")?;
    }
    Ok(())
}

const HEADERS: [&str; 9] = [
    "NAME",
    "INDEX",
    "STATUS",
    "OPERSTATE",
    "TYPE",
    "MAC",
    "MTU",
    "IPV4",
    "GATEWAY",
];

fn row(i: &Interface) -> [String; 9] {
    let dash = || "-".to_string();
    let status = match i.status {
        Some(Status::Up) => "up",
        Some(Status::Down) => "down",
        Some(Status::Removed) => "removed",
        None => "-",
    };
    let ty = match i.link_type {
        Some(LinkType::Wifi) => "wifi",
        _ => "ethernet",
    };
    let ty = match &i.kind {
        Some(k) => format!("{ty}/{k}"),
        None => ty.to_string(),
    };
    let ipv4: Vec<String> = i
        .ipv4_addresses
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefixlen))
        .collect();
    [
        i.interface.clone(),
        i.index.map_or_else(dash, |x| x.to_string()),
        status.to_string(),
        i.operstate.clone().unwrap_or_else(dash),
        ty,
        i.mac.clone().unwrap_or_else(dash),
        i.mtu.map_or_else(dash, |x| x.to_string()),
        if ipv4.is_empty() {
            dash()
        } else {
            ipv4.join(",")
        },
        i.gateway.map_or_else(dash, |g| g.to_string()),
    ]
}

fn write_table(interfaces: &[Interface], out: &mut dyn Write) -> std::io::Result<()> {
    let rows: Vec<[String; 9]> = interfaces.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = HEADERS.map(String::from);
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (k, (cell, w)) in r.iter().zip(widths).enumerate() {
            if k + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let mut a = Interface::named("eth0");
        a.index = Some(2);
        a.status = Some(Status::Up);
        a.operstate = Some("UP".into());
        a.link_type = Some(LinkType::Ethernet);
        a.kind = Some("veth".into());
        a.mac = Some("02:00:00:00:00:01".into());
        a.mtu = Some(1500);
        a.ipv4_addresses = vec![
            ipc::Ipv4Address::new("10.0.0.2".parse().unwrap(), 24).unwrap(),
            ipc::Ipv4Address::new("10.0.0.3".parse().unwrap(), 24).unwrap(),
        ];
        a.gateway = Some("10.0.0.1".parse().unwrap());
        let mut b = Interface::named("wlan-long-name");
        b.index = Some(10);
        b.status = Some(Status::Down);
        let mut out = Vec::new();
        write_table(&[a, b], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME            INDEX  STATUS"));
        assert!(lines[1].contains("10.0.0.2/24,10.0.0.3/24  10.0.0.1"));
        assert!(lines[1].contains("ethernet/veth"));
        // Every column starts at the same offset on every line.
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][col..col + 2], "up");
        assert_eq!(&lines[2][col..col + 4], "down");
    }
}

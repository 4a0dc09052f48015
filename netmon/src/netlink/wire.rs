//! The one walker over netlink datagrams, for both sockets: a datagram carries
//! several messages back to back, each 4-byte aligned (NLMSG_ALIGN).

use std::ops::ControlFlow;

use rtnetlink::packet_core::{DecodeError, NetlinkBuffer};

/// Calls `each` with every message of `data`, each buffer holding exactly one
/// message (its length checked against the datagram), until `each` breaks. Returns
/// what it broke with, `None` when the datagram ended, or the error of the first
/// undecodable header (the rest of the datagram cannot be framed then).
pub(super) fn walk<'a, B>(
    mut data: &'a [u8],
    mut each: impl FnMut(NetlinkBuffer<&'a [u8]>) -> ControlFlow<B>,
) -> Result<Option<B>, DecodeError> {
    while !data.is_empty() {
        let len = NetlinkBuffer::new_checked(data)?.length() as usize;
        let message = NetlinkBuffer::new(&data[..len]);
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
        if let ControlFlow::Break(b) = each(message) {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

    fn message(seq: u32, name: &str) -> Vec<u8> {
        let mut link = LinkMessage::default();
        // A name of odd length makes the message need padding.
        link.attributes.push(LinkAttribute::IfName(name.into()));
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn every_message_once_padding_skipped_and_break_stops() {
        let mut d = message(1, "a");
        let first_len = d.len();
        while d.len() % 4 != 0 {
            d.push(0);
        }
        d.extend(message(2, "bcd"));
        let mut seen = Vec::new();
        let r: Option<()> = walk(&d, |m| {
            seen.push((m.sequence_number(), m.length() as usize));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(r, None);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], (1, first_len));
        assert_eq!(seen[1].0, 2);
        let r = walk(&d, |m| ControlFlow::Break(m.sequence_number())).unwrap();
        assert_eq!(r, Some(1));
    }

    #[test]
    fn a_lying_or_short_header_is_an_error() {
        assert!(walk(&[1, 2, 3], |_| ControlFlow::<()>::Continue(())).is_err());
        let mut d = message(1, "a");
        d[0] = 200;
        assert!(walk(&d, |_| ControlFlow::<()>::Continue(())).is_err());
    }
}

//! What the proxy reads of every message it forwards: shared by the criterion benchmark
//! (`benches/sip_parse.rs`) and the instruction-count loop (`examples/parse_loop.rs`),
//! so both measure the same work.

use presence_proxy::sip::Message;

/// Top Via branch, From and To tags, Call-ID, CSeq and the first Route: returns a number
/// derived from them so the work cannot be optimised away.
pub(crate) fn proxy_reads(msg: &Message) -> usize {
    let mut n = 0;
    if let Some(Ok(via)) = msg.top_via() {
        n += via.branch().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(from)) = msg.from() {
        n += from.tag().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(to)) = msg.to() {
        n += to.tag().map_or(0, <[u8]>::len);
    }
    if let Some(Ok(call_id)) = msg.call_id() {
        n += call_id.len();
    }
    if let Some(Ok(cseq)) = msg.cseq() {
        n += cseq.seq() as usize;
    }
    if let Some(Ok(route)) = msg.routes().next() {
        n += route.uri().as_bytes().len();
    }
    n
}

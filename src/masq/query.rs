//! Reading weft's table back from the kernel (libnftnl parses the answers): does it exist, how
//! is its chain registered, which rules does it hold. What the rules mean is decided by the pure
//! [`decode`](super::expr::decode).

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;

use super::batch::{proto_family, NAT_RANDOM_FULLY};
use super::expr::{comment_from_udata, decode, Expr};
use super::rules::Family;
use super::socket::NftSocket;
use super::{ChainSpec, InstalledRule};

/// A chain by table and name: weft's own (`weft`, `postrouting`) or iptables' `filter`
/// `FORWARD`, where weft's FORWARD rules go.
#[derive(Clone, Copy)]
pub struct ChainRef {
    pub table: &'static CStr,
    pub chain: &'static CStr,
}

/// weft's masquerade chain.
pub const WEFT_CHAIN: ChainRef = ChainRef { table: c"weft", chain: c"postrouting" };

/// A rule as listed: its handle (to delete it by), its comment and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub handle: u64,
    pub comment: String,
    pub rule: InstalledRule,
}
const SEQUENCE: u32 = 1;
const MNL_CB_OK: c_int = 1;

/// An object libnftnl allocated, freed when dropped.
struct Owned<T> {
    ptr: NonNull<T>,
    free: unsafe extern "C" fn(*const T),
}

impl<T> Owned<T> {
    fn new(raw: *mut T, free: unsafe extern "C" fn(*const T)) -> Owned<T> {
        // Only an allocation failure returns null; Rust aborts on those too.
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::process::abort());
        Owned { ptr, free }
    }

    fn raw(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by libnftnl's matching alloc, freed once.
        unsafe { (self.free)(self.ptr.as_ptr()) }
    }
}

/// A request message: header, then the attributes `payload` writes.
fn request(kind: c_int, family: Family, flags: c_int, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    // Names are short: the largest request here is a few dozen bytes. u32 elements keep the
    // header aligned.
    let mut buffer = vec![0u32; 1024];
    // SAFETY: the buffer is large enough and aligned for a netlink header plus the attributes.
    let header = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buffer.as_mut_ptr().cast::<c_char>(),
            kind as u16,
            proto_family(family) as u16,
            flags as u16,
            SEQUENCE,
        )
    };
    payload(header);
    // SAFETY: `header` points into `buffer`, which is alive.
    let len = unsafe { (*header).nlmsg_len } as usize;
    buffer.iter().flat_map(|word| word.to_ne_bytes()).take(len).collect()
}

/// Whether table `at.table` of `family` exists.
pub fn table_exists(socket: &mut NftSocket, family: Family, at: ChainRef) -> io::Result<bool> {
    // SAFETY (both blocks): a fresh table object; libnftnl copies the name.
    let table = Owned::new(unsafe { sys::nftnl_table_alloc() }, sys::nftnl_table_free);
    unsafe { sys::nftnl_table_set_str(table.raw(), sys::NFTNL_TABLE_NAME as u16, at.table.as_ptr()) };
    let message = request(libc::NFT_MSG_GETTABLE, family, libc::NLM_F_ACK, |header| {
        // SAFETY: a header built by nftnl_nlmsg_build_hdr and a live table.
        unsafe { sys::nftnl_table_nlmsg_build_payload(header, table.raw()) }
    });
    let mut seen = false;
    not_found_is_none(socket.exchange("looking up the table", &message, SEQUENCE, on_table, &mut seen))?;
    Ok(seen)
}

fn on_table(_header: &libc::nlmsghdr, seen: &mut bool) -> c_int {
    *seen = true;
    MNL_CB_OK
}

/// How chain `at` of `family` is registered; None when there is no such chain.
pub fn chain(socket: &mut NftSocket, family: Family, at: ChainRef) -> io::Result<Option<Result<ChainSpec, String>>> {
    // SAFETY (both blocks): a fresh chain object; libnftnl copies the names.
    let chain = Owned::new(unsafe { sys::nftnl_chain_alloc() }, sys::nftnl_chain_free);
    unsafe {
        sys::nftnl_chain_set_str(chain.raw(), sys::NFTNL_CHAIN_TABLE as u16, at.table.as_ptr());
        sys::nftnl_chain_set_str(chain.raw(), sys::NFTNL_CHAIN_NAME as u16, at.chain.as_ptr());
    }
    let message = request(libc::NFT_MSG_GETCHAIN, family, libc::NLM_F_ACK, |header| {
        // SAFETY: a header built by nftnl_nlmsg_build_hdr and a live chain.
        unsafe { sys::nftnl_chain_nlmsg_build_payload(header, chain.raw()) }
    });
    let mut found = None;
    not_found_is_none(socket.exchange("reading the chain", &message, SEQUENCE, on_chain, &mut found))?;
    Ok(found)
}

fn on_chain(header: &libc::nlmsghdr, found: &mut Option<Result<ChainSpec, String>>) -> c_int {
    *found = Some(parse_chain(header));
    MNL_CB_OK
}

fn parse_chain(header: &libc::nlmsghdr) -> Result<ChainSpec, String> {
    // SAFETY: allocation only; checked for null by Owned.
    let chain = Owned::new(unsafe { sys::nftnl_chain_alloc() }, sys::nftnl_chain_free);
    let raw = chain.raw();
    // SAFETY: a complete message from the kernel and a live chain object; the getters only read
    // attributes checked to be set.
    unsafe {
        if sys::nftnl_chain_nlmsg_parse(header, raw) < 0 {
            return Err(format!("unparsable chain: {}", io::Error::last_os_error()));
        }
        let attrs = [sys::NFTNL_CHAIN_HOOKNUM, sys::NFTNL_CHAIN_PRIO, sys::NFTNL_CHAIN_TYPE];
        if !attrs.iter().all(|attr| sys::nftnl_chain_is_set(raw, *attr as u16)) {
            return Err("a regular chain, not a base chain".to_string());
        }
        let kind = sys::nftnl_chain_get_str(raw, sys::NFTNL_CHAIN_TYPE as u16);
        Ok(ChainSpec {
            kind: c_string(kind).ok_or("chain without type")?,
            hook: sys::nftnl_chain_get_u32(raw, sys::NFTNL_CHAIN_HOOKNUM as u16),
            priority: sys::nftnl_chain_get_s32(raw, sys::NFTNL_CHAIN_PRIO as u16),
        })
    }
}

/// The rules in weft's chain of `family`, in order; empty when there is no such chain.
pub fn rules(socket: &mut NftSocket, family: Family) -> io::Result<Vec<InstalledRule>> {
    Ok(listed_rules(socket, family, WEFT_CHAIN)?.into_iter().map(|listed| listed.rule).collect())
}

/// The rules in chain `at` of `family`, in order, with handles and comments; empty when there is
/// no such chain.
pub fn listed_rules(socket: &mut NftSocket, family: Family, at: ChainRef) -> io::Result<Vec<ListedRule>> {
    // SAFETY (both blocks): a fresh rule object; libnftnl copies the names.
    let filter = Owned::new(unsafe { sys::nftnl_rule_alloc() }, sys::nftnl_rule_free);
    unsafe {
        sys::nftnl_rule_set_str(filter.raw(), sys::NFTNL_RULE_TABLE as u16, at.table.as_ptr());
        sys::nftnl_rule_set_str(filter.raw(), sys::NFTNL_RULE_CHAIN as u16, at.chain.as_ptr());
    }
    // A dump filtered by table and chain (the kernel filters on those attributes).
    let message = request(libc::NFT_MSG_GETRULE, family, libc::NLM_F_DUMP, |header| {
        // SAFETY: a header built by nftnl_nlmsg_build_hdr and a live rule.
        unsafe { sys::nftnl_rule_nlmsg_build_payload(header, filter.raw()) }
    });
    let mut found = (family, Vec::new());
    not_found_is_none(socket.exchange("listing the rules", &message, SEQUENCE, on_rule, &mut found))?;
    Ok(found.1)
}

fn on_rule(header: &libc::nlmsghdr, found: &mut (Family, Vec<ListedRule>)) -> c_int {
    let listed = listed_rule(found.0, header);
    found.1.push(listed);
    MNL_CB_OK
}

/// One rule message of a dump, decoded as far as weft knows its expressions.
fn listed_rule(family: Family, header: &libc::nlmsghdr) -> ListedRule {
    match parse_rule(header) {
        Ok(parsed) => {
            let rule = match parsed.exprs.and_then(|exprs| decode(family, &exprs, parsed.comment.clone())) {
                Ok(rule) => InstalledRule::Known(rule),
                Err(why) => InstalledRule::Unknown(why),
            };
            ListedRule { handle: parsed.handle, comment: parsed.comment, rule }
        }
        Err(why) => ListedRule { handle: 0, comment: String::new(), rule: InstalledRule::Unknown(why) },
    }
}

/// A rule as the kernel sent it: the expressions may be none weft writes (then why not).
struct ParsedRule {
    handle: u64,
    comment: String,
    exprs: Result<Vec<Expr>, String>,
}

fn parse_rule(header: &libc::nlmsghdr) -> Result<ParsedRule, String> {
    // SAFETY: allocation only; checked for null by Owned.
    let rule = Owned::new(unsafe { sys::nftnl_rule_alloc() }, sys::nftnl_rule_free);
    // SAFETY: a complete message from the kernel and a live rule object.
    if unsafe { sys::nftnl_rule_nlmsg_parse(header, rule.raw()) } < 0 {
        return Err(format!("unparsable rule: {}", io::Error::last_os_error()));
    }
    // SAFETY: a live, parsed rule; the kernel always sends the handle.
    let handle = unsafe { sys::nftnl_rule_get_u64(rule.raw(), sys::NFTNL_RULE_HANDLE as u16) };
    Ok(ParsedRule { handle, comment: rule_comment(&rule).unwrap_or_default(), exprs: rule_exprs(&rule) })
}

fn rule_exprs(rule: &Owned<sys::nftnl_rule>) -> Result<Vec<Expr>, String> {
    // SAFETY: each expression belongs to the live rule, which outlives the iteration.
    ExprIter::new(rule).map(|expr| unsafe { parse_expr(expr) }).collect()
}

/// The expressions of a rule, in order.
struct ExprIter<'a> {
    iter: NonNull<sys::nftnl_expr_iter>,
    _rule: std::marker::PhantomData<&'a Owned<sys::nftnl_rule>>,
}

impl<'a> ExprIter<'a> {
    fn new(rule: &'a Owned<sys::nftnl_rule>) -> ExprIter<'a> {
        // SAFETY: a live rule; the borrow keeps it alive as long as the iterator.
        let iter = unsafe { sys::nftnl_expr_iter_create(rule.raw()) };
        // Only an allocation failure returns null; Rust aborts on those too.
        let iter = NonNull::new(iter).unwrap_or_else(|| std::process::abort());
        ExprIter { iter, _rule: std::marker::PhantomData }
    }
}

impl Iterator for ExprIter<'_> {
    type Item = *const sys::nftnl_expr;

    fn next(&mut self) -> Option<Self::Item> {
        // SAFETY: a live iterator; null marks the end.
        let expr = unsafe { sys::nftnl_expr_iter_next(self.iter.as_ptr()) };
        (!expr.is_null()).then_some(expr.cast_const())
    }
}

impl Drop for ExprIter<'_> {
    fn drop(&mut self) {
        // SAFETY: created by nftnl_expr_iter_create, destroyed once.
        unsafe { sys::nftnl_expr_iter_destroy(self.iter.as_ptr()) }
    }
}

fn rule_comment(rule: &Owned<sys::nftnl_rule>) -> Option<String> {
    let attr = sys::NFTNL_RULE_USERDATA as u16;
    let mut len = 0u32;
    // SAFETY: a live rule; the data stays valid while the rule lives, and is copied out here.
    unsafe {
        if !sys::nftnl_rule_is_set(rule.raw(), attr) {
            return None;
        }
        let data = sys::nftnl_rule_get_data(rule.raw(), attr, &mut len);
        let bytes = bytes_at(data.cast(), len)?;
        comment_from_udata(bytes)
    }
}

/// One expression, or why it is none that weft writes.
///
/// # Safety
/// `expr` must point to a live expression.
unsafe fn parse_expr(expr: *const sys::nftnl_expr) -> Result<Expr, String> {
    let get_u32 = |attr: u32| unsafe { sys::nftnl_expr_get_u32(expr, attr as u16) };
    let get_data = |attr: u32| -> Vec<u8> {
        let mut len = 0u32;
        let data = unsafe { sys::nftnl_expr_get(expr, attr as u16, &mut len) };
        unsafe { bytes_at(data.cast(), len) }.map(<[u8]>::to_vec).unwrap_or_default()
    };
    let name = unsafe { c_string(sys::nftnl_expr_get_str(expr, sys::NFTNL_EXPR_NAME as u16)) };
    match name.as_deref() {
        Some("payload") if get_u32(sys::NFTNL_EXPR_PAYLOAD_BASE) == libc::NFT_PAYLOAD_NETWORK_HEADER as u32 => {
            Ok(Expr::Payload {
                offset: get_u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: get_u32(sys::NFTNL_EXPR_PAYLOAD_LEN),
            })
        }
        Some("bitwise") if get_data(sys::NFTNL_EXPR_BITWISE_XOR).iter().all(|b| *b == 0) => {
            Ok(Expr::Bitwise { mask: get_data(sys::NFTNL_EXPR_BITWISE_MASK) })
        }
        Some("cmp") => {
            let negated = match get_u32(sys::NFTNL_EXPR_CMP_OP) as c_int {
                libc::NFT_CMP_EQ => false,
                libc::NFT_CMP_NEQ => true,
                op => return Err(format!("comparison with operator {op}")),
            };
            Ok(Expr::Cmp { negated, data: get_data(sys::NFTNL_EXPR_CMP_DATA) })
        }
        Some("immediate") if get_u32(sys::NFTNL_EXPR_IMM_DREG) == libc::NFT_REG_VERDICT as u32 => {
            match get_u32(sys::NFTNL_EXPR_IMM_VERDICT) as c_int {
                libc::NFT_RETURN => Ok(Expr::Return),
                libc::NF_ACCEPT => Ok(Expr::Accept),
                verdict => Err(format!("a verdict ({verdict}) weft does not write")),
            }
        }
        Some("masq")
            if get_u32(sys::NFTNL_EXPR_MASQ_FLAGS) == NAT_RANDOM_FULLY
                && !unsafe { sys::nftnl_expr_is_set(expr, sys::NFTNL_EXPR_MASQ_REG_PROTO_MIN as u16) } =>
        {
            Ok(Expr::MasqueradeFullyRandom)
        }
        Some(other) => Err(format!("a {other} expression weft does not write")),
        None => Err("an expression without name".to_string()),
    }
}

/// # Safety
/// `data` must be null or point to `len` readable bytes that outlive the result.
unsafe fn bytes_at<'a>(data: *const u8, len: u32) -> Option<&'a [u8]> {
    if data.is_null() {
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(data, len as usize) })
}

/// # Safety
/// `s` must be null or a valid C string.
unsafe fn c_string(s: *const c_char) -> Option<String> {
    if s.is_null() {
        return None;
    }
    Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

/// ENOENT: the table (or chain) is not there, which for a query is an answer, not a failure.
fn not_found_is_none(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

//! Encoding weft's table into one nf_tables batch (libnftnl): the only place that turns
//! [`Expr`]s into kernel messages.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, NlMsg, Policy, Rule, Table};

use super::expr::{encode, Expr};
use super::query::ChainRef;
use super::rules::{Family, MasqRule};
use super::{CHAIN, PRIORITY_SRCNAT, TABLE};

/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY` from linux/netfilter/nf_nat.h (not in the libc crate).
pub const NAT_RANDOM_FULLY: u32 = 0x10;

const TABLE_C: &CStr = c"weft";
const CHAIN_C: &CStr = c"postrouting";

pub fn proto_family(family: Family) -> nftnl::ProtoFamily {
    match family {
        Family::V4 => nftnl::ProtoFamily::Ipv4,
        Family::V6 => nftnl::ProtoFamily::Ipv6,
    }
}

/// A finalized batch and what each of its messages does, to name the one the kernel refuses.
pub struct LabelledBatch {
    pub batch: FinalizedBatch,
    labels: Vec<String>,
}

impl LabelledBatch {
    /// What the message with `sequence` did.
    pub fn label(&self, sequence: u32) -> Option<&str> {
        let range = self.batch.sequence_numbers();
        // On kernels that acknowledge the batch's begin and end markers (6.10+), those two take
        // sequence numbers too, around ours.
        let first = if range.len() == self.labels.len() + 2 { range.start + 1 } else { range.start };
        let index = sequence.checked_sub(first)?;
        self.labels.get(index as usize).map(String::as_str)
    }
}

/// A batch under construction, with a label per message.
struct Labelled {
    batch: Batch,
    labels: Vec<String>,
}

impl Labelled {
    fn new() -> Labelled {
        Labelled { batch: Batch::new(), labels: Vec::new() }
    }

    fn add(&mut self, message: &impl NlMsg, kind: MsgType, label: String) {
        self.batch.add(message, kind);
        self.labels.push(label);
    }

    fn finalize(self) -> LabelledBatch {
        LabelledBatch { batch: self.batch.finalize(), labels: self.labels }
    }
}

/// Replaces weft's table of `family` with one holding exactly `rules`, in one transaction: at no
/// moment is there no masquerade, or a mix of old and new rules.
pub fn replace_table(family: Family, rules: &[MasqRule]) -> Result<LabelledBatch, String> {
    let name = format!("{family} {TABLE}");
    let table = Table::new(TABLE_C, proto_family(family));
    let mut batch = Labelled::new();
    // Adding an existing table changes nothing, and makes the delete below valid when there was
    // none: one batch serves both the first install and every replacement.
    batch.add(&table, MsgType::Add, format!("add table {name}"));
    batch.add(&table, MsgType::Del, format!("delete table {name}"));
    batch.add(&table, MsgType::Add, format!("add table {name}"));
    let chain = nat_chain(&table);
    batch.add(&chain, MsgType::Add, format!("add chain {name} {CHAIN}"));
    for (index, masq_rule) in rules.iter().enumerate() {
        let rule = build_rule(&chain, masq_rule)?;
        let label = format!("add rule {} ({masq_rule})", index + 1);
        batch.add(&rule, MsgType::Add, label);
    }
    Ok(batch.finalize())
}

/// Deletes weft's table of `family` with everything in it; the kernel answers ENOENT when there
/// is none.
pub fn delete_table(family: Family) -> LabelledBatch {
    let table = Table::new(TABLE_C, proto_family(family));
    let mut batch = Labelled::new();
    let label = format!("delete table {family} {TABLE}");
    batch.add(&table, MsgType::Del, label);
    batch.finalize()
}

/// In chain `at` of `family` (someone else's: iptables' `filter FORWARD`), deletes the rules with
/// the handles `delete` and appends `add`, in one transaction. The table and chain are not
/// created: a batch against a chain that is gone fails as a whole (ENOENT).
pub fn edit_chain(family: Family, at: ChainRef, delete: &[u64], add: &[MasqRule]) -> Result<LabelledBatch, String> {
    let table = Table::new(at.table, proto_family(family));
    let chain = Chain::new(at.chain, &table);
    let name = format!("{family} {} {}", at.table.to_string_lossy(), at.chain.to_string_lossy());
    let mut batch = Labelled::new();
    for handle in delete {
        let mut rule = Rule::new(&chain);
        rule.set_handle(*handle);
        batch.add(&rule, MsgType::Del, format!("delete rule {name} handle {handle}"));
    }
    for masq_rule in add {
        let rule = build_rule(&chain, masq_rule)?;
        batch.add(&rule, MsgType::Add, format!("add rule {name} ({masq_rule})"));
    }
    Ok(batch.finalize())
}

fn nat_chain(table: &Table) -> Chain<'_> {
    let mut chain = Chain::new(CHAIN_C, table);
    chain.set_type(ChainType::Nat);
    chain.set_hook(Hook::PostRouting, PRIORITY_SRCNAT);
    // Packets that no rule takes go on unchanged: this chain only ever decides about NAT.
    chain.set_policy(Policy::Accept);
    chain
}

fn build_rule<'a>(chain: &'a Chain<'a>, masq_rule: &MasqRule) -> Result<Rule<'a>, String> {
    let mut rule = Rule::new(chain);
    for expr in encode(masq_rule) {
        rule.add_expr(&expr);
    }
    let comment = CString::new(masq_rule.comment.as_str())
        .map_err(|_| format!("comment {:?} contains NUL", masq_rule.comment))?;
    rule.set_comment(&comment).map_err(|e| format!("comment {:?}: {e}", masq_rule.comment))?;
    Ok(rule)
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(self.kernel_name());
        let raw = expr.as_ptr();
        // SAFETY: `raw` is a live expression of the kind whose attributes are set below; libnftnl
        // copies the data it is given.
        unsafe {
            match self {
                Expr::Payload { offset, len } => {
                    let base = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
                    set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_BASE, base);
                    set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                    set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
                    set_u32(raw, sys::NFTNL_EXPR_PAYLOAD_DREG, libc::NFT_REG_1 as u32);
                }
                Expr::Bitwise { mask } => {
                    set_u32(raw, sys::NFTNL_EXPR_BITWISE_SREG, libc::NFT_REG_1 as u32);
                    set_u32(raw, sys::NFTNL_EXPR_BITWISE_DREG, libc::NFT_REG_1 as u32);
                    set_u32(raw, sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
                    set_data(raw, sys::NFTNL_EXPR_BITWISE_MASK, mask);
                    set_data(raw, sys::NFTNL_EXPR_BITWISE_XOR, &vec![0; mask.len()]);
                }
                Expr::Cmp { negated, data } => {
                    let op = if *negated { libc::NFT_CMP_NEQ } else { libc::NFT_CMP_EQ };
                    set_u32(raw, sys::NFTNL_EXPR_CMP_SREG, libc::NFT_REG_1 as u32);
                    set_u32(raw, sys::NFTNL_EXPR_CMP_OP, op as u32);
                    set_data(raw, sys::NFTNL_EXPR_CMP_DATA, data);
                }
                Expr::Return => {
                    set_u32(raw, sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_VERDICT as u32);
                    set_u32(raw, sys::NFTNL_EXPR_IMM_VERDICT, libc::NFT_RETURN as u32);
                }
                Expr::MasqueradeFullyRandom => {
                    set_u32(raw, sys::NFTNL_EXPR_MASQ_FLAGS, NAT_RANDOM_FULLY);
                }
                Expr::Accept => {
                    set_u32(raw, sys::NFTNL_EXPR_IMM_DREG, libc::NFT_REG_VERDICT as u32);
                    set_u32(raw, sys::NFTNL_EXPR_IMM_VERDICT, libc::NF_ACCEPT as u32);
                }
            }
        }
        expr
    }
}

impl Expr {
    /// The kernel's (and libnftnl's) name for the expression type.
    pub fn kernel_name(&self) -> &'static CStr {
        match self {
            Expr::Payload { .. } => c"payload",
            Expr::Bitwise { .. } => c"bitwise",
            Expr::Cmp { .. } => c"cmp",
            Expr::Return | Expr::Accept => c"immediate",
            Expr::MasqueradeFullyRandom => c"masq",
        }
    }
}

fn alloc_expr(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: a valid C string; the result is checked below.
    let raw = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
    // Only an allocation failure returns null; Rust aborts on those too.
    NonNull::new(raw).unwrap_or_else(|| std::process::abort())
}

/// # Safety
/// `expr` must point to a live expression that has attribute `attr`.
unsafe fn set_u32(expr: *mut sys::nftnl_expr, attr: u32, value: u32) {
    unsafe { sys::nftnl_expr_set_u32(expr, attr as u16, value) }
}

/// # Safety
/// `expr` must point to a live expression that has attribute `attr`.
unsafe fn set_data(expr: *mut sys::nftnl_expr, attr: u32, data: &[u8]) {
    let ptr = data.as_ptr().cast::<c_void>();
    // libnftnl copies the bytes; it fails only when out of memory.
    if unsafe { sys::nftnl_expr_set(expr, attr as u16, ptr, data.len() as u32) } < 0 {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_names_match_the_public_ones() {
        assert_eq!(TABLE_C.to_str(), Ok(TABLE));
        assert_eq!(CHAIN_C.to_str(), Ok(CHAIN));
    }

    #[test]
    fn every_message_of_a_batch_has_its_label() {
        let rules = super::super::rules::masq_rules("10.0.0.0/8".parse().unwrap(), "10.1.0.0/16".parse().unwrap());
        let batch = replace_table(Family::V4, &rules).unwrap();
        let labels: Vec<&str> = batch.batch.sequence_numbers().filter_map(|s| batch.label(s)).collect();
        assert_eq!(labels.len(), 4 + rules.len(), "{labels:#?}");
        assert_eq!(
            labels[..4],
            ["add table ip weft", "delete table ip weft", "add table ip weft", "add chain ip weft postrouting"]
        );
        assert!(labels[4].starts_with("add rule 1 (ip saddr 10.0.0.0/8 ip daddr 10.0.0.0/8 return"), "{}", labels[4]);
        assert_eq!(batch.label(batch.batch.sequence_numbers().end), None);
    }
}

//! The connection table's batch operations (lb_userspace::batch) against a
//! real LRU hash map: a batch walk sees exactly what an entry-by-entry walk
//! sees, batch deletes skip keys that are gone, and a map of another shape
//! is refused before any syscall could write past a buffer.

use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_common::{names, FlowKey, FlowPin};
use lb_tests::{
    flows::{fill, flow_key},
    xdp::{require_root, static_config},
};
use lb_userspace::{
    batch::BatchMap,
    loader::{self, BalancerOptions},
    maps::BalancerMaps,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

fn options(flow_table_entries: u32) -> BalancerOptions {
    BalancerOptions {
        config: static_config(1500),
        ring_pool_slots: 4 * 65537,
        flow_table_entries,
    }
}

fn key_set(entries: &[(FlowKey, FlowPin)]) -> BTreeSet<(u32, u32, u16, u16)> {
    entries
        .iter()
        .map(|(k, _)| (k.src_addr, k.dst_addr, k.src_port, k.dst_port))
        .collect()
}

#[test]
fn batch_walk_and_delete_match_the_entry_by_entry_way() {
    require_root();
    let mut ebpf = loader::load_balancer(&options(65536)).expect("loading the balancer");
    let mut maps = BalancerMaps::take_from(&mut ebpf).expect("maps");
    let table = maps.flow_table().expect("a second handle on FLOWS");
    assert_eq!(table.capacity(), 65536);
    // 30000 flows to one VIP, 10000 to another, pinned to distinct ids.
    let mut keys: Vec<FlowKey> = (0..30_000).map(|i| flow_key(i, VIP, 80)).collect();
    keys.extend((0..10_000).map(|i| flow_key(i, OTHER_VIP, 80)));
    fill(&table, &keys, |i| FlowPin {
        backend_id: i as u32 % 7,
        generation: 1,
        ..FlowPin::default()
    })
    .expect("filling");

    // Batch walk: every entry once, and the same entries as the old walk.
    let mut seen = 0u64;
    let n = table.for_each(|_, _| seen += 1).expect("batch walk");
    assert_eq!((n, seen), (40_000, 40_000));
    let is_vip = |k: &FlowKey| k.dst_addr == lb_common::ipv4_to_wire(VIP.octets());
    let batch = maps.flows_matching(is_vip).expect("batch walk");
    let old = maps.flows_matching_per_entry(is_vip);
    assert_eq!(batch.len(), 30_000);
    assert_eq!(key_set(&batch), key_set(&old));
    for (key, pin) in &batch {
        assert_eq!(maps.flow_pin(key).expect("lookup"), Some(*pin));
    }

    // Batch delete of the VIP's flows plus 100 that were never there.
    let mut doomed: Vec<FlowKey> = batch.iter().map(|(k, _)| *k).collect();
    doomed.splice(5000..5000, (50_000..50_100).map(|i| flow_key(i, VIP, 80)));
    doomed.push(flow_key(60_000, VIP, 80));
    assert_eq!(maps.remove_flows(&doomed).expect("batch delete"), 30_000);
    assert!(maps.flows_matching(is_vip).expect("walk").is_empty());
    assert_eq!(maps.for_each_flow(|_, _| {}).expect("walk"), 10_000);
    // An empty table walks to nothing; an empty delete deletes nothing.
    let rest: Vec<FlowKey> = maps
        .flows_matching(|_| true)
        .expect("walk")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(maps.remove_flows(&rest).expect("delete"), 10_000);
    assert_eq!(table.for_each(|_, _| {}).expect("walk"), 0);
    assert_eq!(maps.remove_flows(&[]).expect("delete"), 0);
}

#[test]
fn a_map_of_another_shape_is_refused() {
    require_root();
    let mut ebpf = loader::load_balancer(&options(1024)).expect("loading the balancer");
    let vips = ebpf.take_map(names::VIPS).expect("VIPS");
    let aya::maps::Map::HashMap(vips) = vips else {
        panic!("VIPS is a hash map");
    };
    let e = BatchMap::<FlowKey, FlowPin>::new(vips)
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("bytes"), "{e:#}");
    let stats = ebpf.take_map(names::GLOBAL_STATS).expect("GLOBAL_STATS");
    let aya::maps::Map::PerCpuArray(stats) = stats else {
        panic!("GLOBAL_STATS is a per-CPU array");
    };
    let e = BatchMap::<u32, u64>::new(stats).err().expect("refused");
    assert!(format!("{e:#}").contains("hash maps"), "{e:#}");
}

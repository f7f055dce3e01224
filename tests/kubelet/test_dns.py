"""A pod's resolv.conf and hosts file by dnsPolicy, dnsConfig and hostAliases."""

from __future__ import annotations

from kybernetes.kubelet.dns import ResolvConf, hosts_file, missing_cluster_dns, parse_resolv_conf, resolv_conf

HOST = parse_resolv_conf("# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\n"
                         "search corp.example\noptions edns0 timeout:2\n")


def pod(**spec) -> dict:
    return {"metadata": {"name": "web-0", "namespace": "shop"}, "spec": spec}


def test_parse_host_resolv_conf() -> None:
    assert HOST == ResolvConf(["192.0.2.53", "192.0.2.54"], ["corp.example"], ["edns0", "timeout:2"])


def test_cluster_first() -> None:
    rc = resolv_conf(pod(), cluster_dns=["10.43.0.10"], cluster_domain="cluster.local", host=HOST)
    assert rc.render() == ("search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n"
                           "nameserver 10.43.0.10\noptions ndots:5\n")


def test_host_network_falls_back_unless_with_host_net() -> None:
    rc = resolv_conf(pod(hostNetwork=True), cluster_dns=["10.43.0.10"], cluster_domain="cluster.local", host=HOST)
    assert rc.nameservers == ["192.0.2.53", "192.0.2.54"] and rc.options == ["edns0", "timeout:2"]
    rc = resolv_conf(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), cluster_dns=["10.43.0.10"],
                     cluster_domain="cluster.local", host=HOST)
    assert rc.nameservers == ["10.43.0.10"]


def test_no_cluster_dns_falls_back_to_default() -> None:
    assert missing_cluster_dns(pod(), [])
    assert not missing_cluster_dns(pod(dnsPolicy="Default"), [])
    rc = resolv_conf(pod(), cluster_dns=[], cluster_domain="cluster.local", host=HOST)
    assert rc.nameservers == HOST.nameservers


def test_none_with_dns_config_and_merging() -> None:
    cfg = {"nameservers": ["192.0.2.1"], "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
           "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}
    rc = resolv_conf(pod(dnsPolicy="None", dnsConfig=cfg), cluster_dns=["10.43.0.10"],
                     cluster_domain="cluster.local", host=HOST)
    assert rc.render() == ("search ns1.svc.cluster-domain.example my.dns.search.suffix\nnameserver 192.0.2.1\n"
                           "options ndots:2 edns0\n")
    rc = resolv_conf(pod(dnsConfig={"nameservers": ["a", "b", "c"], "options": [{"name": "ndots", "value": "1"}]}),
                     cluster_dns=["10.43.0.10"], cluster_domain="cluster.local", host=HOST)
    assert rc.nameservers == ["10.43.0.10", "a", "b"] and rc.options == ["ndots:1"]


def test_hosts_file() -> None:
    text = hosts_file(pod(hostname="web-0", subdomain="nginx",
                          hostAliases=[{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]),
                      ["10.42.0.7", "fd42::7"], "cluster.local")
    assert "127.0.0.1\tlocalhost\n" in text
    assert "10.42.0.7\tweb-0.nginx.shop.svc.cluster.local\tweb-0\n" in text
    assert "fd42::7\tweb-0.nginx.shop.svc.cluster.local\tweb-0\n" in text
    assert text.endswith("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n")

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	remote "k8s.io/cri-client/pkg"
)

// The real node: containerd + runc + kubelet + kube-proxy on this machine,
// registered as `real-0`. Its pods live in network namespaces containerd
// creates, attached to the bridge zl-br0. The host side of the bridge holds
// 198.19.128.1: the node's address, the API server's advertised address (so
// the `kubernetes` Service has a valid, non-loopback endpoint) and the pods'
// gateway. Guards keep every packet inside 198.18.0.0/15:
//   - the Service CIDR is routed onto the bridge, everything else in
//     198.18.0.0/15 is unreachable (never sent out of the machine's uplink);
//   - forwarded traffic from the bridge to any address outside 198.18.0.0/15
//     is dropped, and so is pod traffic to the host's other addresses.
const (
	realNodeName  = "real-0"
	realPodCIDR   = "198.19.128.0/24"
	realHostIP    = "198.19.128.1"
	bridgeName    = "zl-br0"
	benchBlock    = "198.18.0.0/15"
	guardChain    = "ZL-GUARD"
	realNodeTaint = "zen-lead.io/real-node"
	realNodeLabel = "zen-lead.io/node"
	pauseImage    = "registry.k8s.io/pause:3.10"
	// The local registry: the bridge's host address, where the node's
	// containerd pulls from (pods never reach it: the guards drop pod traffic
	// to the host). Images are pushed as <registryAddr>/<name>:<tag>.
	registryAddr = realHostIP + ":5000"
)

var realComponents = []string{"registry", "containerd", "kubelet", "kube-proxy"}

// hostCmd runs a host networking command, failing with its output.
func hostCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// realNodePreflight says why the real node cannot run here, or "".
func realNodePreflight() string {
	if os.Geteuid() != 0 {
		return "the real node needs root (containerd, network namespaces, iptables)"
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Sprintf("%s is not installed (apt-get install containerd runc containernetworking-plugins iptables)", bin)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return "CNI plugins are not installed at /usr/lib/cni (apt-get install containernetworking-plugins)"
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
	}
	return ""
}

// setupHostNetwork creates the bridge and the guards. Idempotent.
func setupHostNetwork() error {
	if _, err := net.InterfaceByName(bridgeName); err != nil {
		if err := hostCmd("ip", "link", "add", bridgeName, "type", "bridge"); err != nil {
			return err
		}
	}
	_ = exec.Command("ip", "addr", "add", realHostIP+"/24", "dev", bridgeName).Run() // exists on re-run
	if err := hostCmd("ip", "link", "set", bridgeName, "up"); err != nil {
		return err
	}
	for _, r := range [][]string{
		{"route", "replace", "unreachable", benchBlock},
		{"route", "replace", serviceCIDR, "dev", bridgeName, "src", realHostIP},
	} {
		if err := hostCmd("ip", r...); err != nil {
			return err
		}
	}
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/bridge/bridge-nf-call-iptables", "1"},
	} {
		if err := os.WriteFile(s.path, []byte(s.value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s: %w", s.path, err)
		}
	}
	_ = exec.Command("iptables", "-N", guardChain).Run() // exists on re-run
	if err := hostCmd("iptables", "-F", guardChain); err != nil {
		return err
	}
	for _, rule := range [][]string{
		{"-A", guardChain, "-i", bridgeName, "!", "-d", benchBlock, "-j", "DROP"},
		{"-A", guardChain, "-o", bridgeName, "!", "-s", benchBlock, "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"},
	} {
		if err := hostCmd("iptables", rule...); err != nil {
			return err
		}
	}
	for _, chain := range []string{"FORWARD", "INPUT"} {
		if exec.Command("iptables", "-C", chain, "-j", guardChain).Run() != nil {
			if err := hostCmd("iptables", "-I", chain, "1", "-j", guardChain); err != nil {
				return err
			}
		}
	}
	return nil
}

// kubeletChains are iptables chains the kubelet itself creates (kube-proxy's
// own are removed by `kube-proxy --cleanup`).
var kubeletChains = map[string][]string{
	"filter": {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY"},
	"nat":    {"KUBE-KUBELET-CANARY"},
	"mangle": {"KUBE-KUBELET-CANARY"},
}

func teardownHostNetwork() {
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		for exec.Command("iptables", "-D", chain, "-j", "KUBE-FIREWALL").Run() == nil {
		}
	}
	for table, chains := range kubeletChains {
		for _, c := range chains {
			_ = exec.Command("iptables", "-t", table, "-F", c).Run()
			_ = exec.Command("iptables", "-t", table, "-X", c).Run()
		}
	}
	for _, chain := range []string{"FORWARD", "INPUT"} {
		for exec.Command("iptables", "-D", chain, "-j", guardChain).Run() == nil {
		}
	}
	_ = exec.Command("iptables", "-F", guardChain).Run()
	_ = exec.Command("iptables", "-X", guardChain).Run()
	_ = exec.Command("ip", "route", "del", serviceCIDR, "dev", bridgeName).Run()
	_ = exec.Command("ip", "route", "del", "unreachable", benchBlock).Run()
	_ = exec.Command("ip", "link", "del", bridgeName).Run()
}

func (st *state) containerdSocket() string {
	return filepath.Join(st.Dir, "containerd", "containerd.sock")
}

// startRealNode brings up containerd, imports the images, and starts the
// kubelet and kube-proxy. The API server must already be serving.
func startRealNode(o *upOptions, st *state, pki *clusterPKI, server string) error {
	if err := setupHostNetwork(); err != nil {
		return fmt.Errorf("real node network: %w", err)
	}
	dirs := map[string]string{}
	for _, d := range []string{"containerd", "containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "kubelet", "kubelet-pki", "kube-proxy", "registry"} {
		dirs[d] = filepath.Join(st.Dir, d)
		if err := os.MkdirAll(dirs[d], 0o700); err != nil {
			return err
		}
	}
	if err := startRegistry(o, st, dirs["registry"]); err != nil {
		return err
	}
	// containerd pulls from the local registry over plain HTTP (hosts.toml:
	// containerd's per-registry configuration, as on a user's node). It
	// also serves docker.io and ghcr.io, so the examples' busybox and the
	// chart's image pull by the names a user's cluster pulls: each mirror's
	// only host and its server are the local registry, so containerd never
	// falls back to the internet (images.sh lists what up.sh pushes).
	for _, name := range []string{registryAddr, "docker.io", "ghcr.io"} {
		dir := filepath.Join(st.Dir, "containerd/certs.d", name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(fmt.Sprintf(`server = "http://%[1]s"

# containerd 1.6 refuses a hosts.toml without a host table.
[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
`, registryAddr)), 0o600); err != nil {
			return err
		}
	}
	sock := st.containerdSocket()
	containerdConfig := filepath.Join(dirs["containerd"], "config.toml")
	if err := os.WriteFile(containerdConfig, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, dirs["containerd/root"], dirs["containerd/state"], sock, sock+".ttrpc", pauseImage, dirs["cni/net.d"], filepath.Join(dirs["containerd"], "certs.d"))), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dirs["cni/net.d"], "10-zl.conflist"), []byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "zl",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, bridgeName, realPodCIDR, realHostIP, dirs["cni/ipam"])), 0o600); err != nil {
		return err
	}
	if err := st.spawn("containerd", "containerd", "", "--config", containerdConfig, "--log-level", "warn"); err != nil {
		return err
	}
	if err := waitFor(o.timeout, "containerd to serve", func() error {
		return exec.Command("ctr", "--address", sock, "version").Run()
	}, st); err != nil {
		return err
	}
	if err := st.importImages(o.images); err != nil {
		return err
	}

	// Kubelet identity and serving certificate, kube-proxy identity.
	kubeletKP, err := newKeyPair(certSpec{cn: "system:node:" + realNodeName, orgs: []string{"system:nodes"}, client: true, validFor: 365 * 24 * time.Hour}, pki.ca)
	if err != nil {
		return err
	}
	servingKP, err := newKeyPair(certSpec{cn: realNodeName, dns: []string{realNodeName}, ips: []net.IP{net.ParseIP(realHostIP)}, server: true, validFor: 365 * 24 * time.Hour}, pki.ca)
	if err != nil {
		return err
	}
	proxyKP, err := newKeyPair(certSpec{cn: "system:kube-proxy", client: true, validFor: 365 * 24 * time.Hour}, pki.ca)
	if err != nil {
		return err
	}
	if err := servingKP.write(dirs["kubelet-pki"], "kubelet-serving"); err != nil {
		return err
	}
	kubeletKubeconfig := filepath.Join(st.Dir, "config", "kubelet.kubeconfig")
	proxyKubeconfig := filepath.Join(st.Dir, "config", "kube-proxy.kubeconfig")
	if err := writeKubeconfig(kubeletKubeconfig, server, "kubelet", pki.ca, kubeletKP); err != nil {
		return err
	}
	if err := writeKubeconfig(proxyKubeconfig, server, "kube-proxy", pki.ca, proxyKP); err != nil {
		return err
	}
	// Pods get no DNS server beyond their own loopback: nothing leaves the machine.
	resolv := filepath.Join(dirs["kubelet"], "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return err
	}
	kubeletConfig := filepath.Join(st.Dir, "config", "kubelet.yaml")
	if err := os.WriteFile(kubeletConfig, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %q
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
resolvConf: %q
clusterDomain: cluster.local
maxPods: 40
podPidsLimit: -1
serializeImagePulls: false
# Test images are imported, not pulled, so they could not be pulled back
# after a collection: never collect images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A shared 2-core machine: evict only when really short.
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
enforceNodeAllocatable: []
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 5s
registerWithTaints:
- key: %q
  value: "true"
  effect: NoSchedule
`, realHostIP, st.Ports["kubelet"], st.Ports["kubelet-healthz"], filepath.Join(st.Dir, "pki", "ca.crt"),
		filepath.Join(dirs["kubelet-pki"], "kubelet-serving.crt"), filepath.Join(dirs["kubelet-pki"], "kubelet-serving.key"),
		sock, resolv, realNodeTaint)), 0o600); err != nil {
		return err
	}
	if err := st.spawn("kubelet", st.Binary, "kubelet",
		"--config="+kubeletConfig,
		"--kubeconfig="+kubeletKubeconfig,
		"--root-dir="+dirs["kubelet"],
		"--cert-dir="+dirs["kubelet-pki"],
		"--hostname-override="+realNodeName,
		"--node-ip="+realHostIP,
		"--node-labels="+realNodeLabel+"=real",
		"--v=1",
	); err != nil {
		return err
	}
	// minSyncPeriod is kube-proxy's default (0s would be replaced by it):
	// leader routing is measured against the rate limit users have.
	proxyConfig := filepath.Join(dirs["kube-proxy"], "config.yaml")
	if err := os.WriteFile(proxyConfig, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: iptables
clusterCIDR: %q
hostnameOverride: %q
bindAddress: %q
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
nodePortAddresses: [%q]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  minSyncPeriod: 1s
  syncPeriod: 30s
`, proxyKubeconfig, realPodCIDR, realNodeName, realHostIP, st.Ports["kube-proxy-healthz"], st.Ports["kube-proxy-metrics"], realHostIP+"/32")), 0o600); err != nil {
		return err
	}
	return st.spawn("kube-proxy", st.Binary, "kube-proxy", "--config="+proxyConfig)
}

// startRegistry serves the CNCF distribution registry (tools/oci's
// zl-registry) on the bridge's host address, storing images under dir.
func startRegistry(o *upOptions, st *state, dir string) error {
	if o.registry == "" {
		return fmt.Errorf("the real node needs --registry (tools/oci/build.sh builds tools/oci/bin/zl-registry)")
	}
	if _, err := os.Stat(o.registry); err != nil {
		return fmt.Errorf("registry binary: %w (tools/oci/build.sh builds it)", err)
	}
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: %q}
  delete: {enabled: true}
http:
  addr: %q
`, filepath.Join(dir, "data"), registryAddr)), 0o600); err != nil {
		return err
	}
	if err := st.spawn("registry", o.registry, "serve", config); err != nil {
		return err
	}
	return waitFor(o.timeout, "the registry to serve on "+registryAddr, func() error {
		return httpOK("http://" + registryAddr + "/v2/")
	}, st)
}

// importImages loads every OCI archive in dir into containerd's k8s.io
// namespace (a no-op for content it already has).
func (st *state) importImages(dir string) error {
	archives, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	if len(archives) == 0 {
		return fmt.Errorf("no image archives in %s (tests/cluster/images.sh builds them)", dir)
	}
	sort.Strings(archives)
	for _, a := range archives {
		out, err := exec.Command("ctr", "--address", st.containerdSocket(), "-n", "k8s.io", "images", "import", "--no-unpack=false", a).CombinedOutput()
		if err != nil {
			// Older ctr has no --no-unpack flag; retry plainly.
			out, err = exec.Command("ctr", "--address", st.containerdSocket(), "-n", "k8s.io", "images", "import", a).CombinedOutput()
		}
		if err != nil {
			return fmt.Errorf("importing %s: %v: %s", a, err, strings.TrimSpace(string(out)))
		}
	}
	fmt.Printf("zl-cluster: imported %d image archives from %s\n", len(archives), dir)
	return nil
}

func waitRealNodeReady(ctx context.Context, o *upOptions, st *state) error {
	admin, err := clientFor(st.Kubeconfig)
	if err != nil {
		return err
	}
	return waitFor(o.timeout, "node real-0 to be Ready", func() error {
		n, err := admin.CoreV1().Nodes().Get(ctx, realNodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
			}
		}
		return fmt.Errorf("no Ready condition yet")
	}, st)
}

// stopRealNode removes every pod sandbox (which tears down pod networks and
// network namespaces), stops the node's processes and any container shims
// they left, unmounts what they mounted under the state directory, and
// removes the host network pieces.
func (st *state) stopRealNode() {
	if _, ok := st.PIDs["containerd"]; !ok {
		st.stopOne("registry") // started first: up may have failed after it
		return
	}
	st.stopOne("kubelet")
	if pid, ok := st.PIDs["containerd"]; ok && st.ours(pid) {
		logger := logr.Discard()
		rs, err := remote.NewRemoteRuntimeService("unix://"+st.containerdSocket(), 10*time.Second, nil, &logger)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			sandboxes, err := rs.ListPodSandbox(ctx, nil)
			if err == nil {
				for _, sb := range sandboxes {
					_ = rs.StopPodSandbox(ctx, sb.Id)
					_ = rs.RemovePodSandbox(ctx, sb.Id)
				}
				fmt.Printf("zl-cluster: removed %d pod sandboxes\n", len(sandboxes))
			}
			cancel()
		}
	}
	st.stopOne("kube-proxy")
	if argv, ok := st.Argv["kube-proxy"]; ok {
		// Remove kube-proxy's iptables chains.
		cfg := ""
		for _, a := range argv {
			if strings.HasPrefix(a, "--config=") {
				cfg = a
			}
		}
		_ = exec.Command(st.Binary, "kube-proxy", "--cleanup", cfg).Run()
	}
	st.stopOne("containerd")
	st.stopOne("registry")
	st.killStrays()
	st.unmountAll()
	teardownHostNetwork()
}

// killStrays ends container shims and anything else whose command line names
// the state directory (e.g. a shim left by a killed containerd).
func (st *state) killStrays() {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if st.ours(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountAll detaches every mount below the state directory, deepest first.
func (st *state) unmountAll() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], st.Dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	if len(mounts) > 0 {
		fmt.Printf("zl-cluster: unmounted %d mounts under %s\n", len(mounts), st.Dir)
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Addresses. Everything the cluster hands out comes from 198.18.0.0/15, the
// block reserved for benchmarking that is never routed, so no test traffic can
// leave this machine: Services get 198.19.0.0/20, KWOK pods 198.18.0.0/16.
const (
	serviceCIDR   = "198.19.0.0/20"
	kwokPodCIDR   = "198.18.0.0/16"
	kwokNodeIP    = "198.19.254.1"
	kwokNodeLabel = "type"
)

// state is what `up` records so that `down` and `status` (and a second `up`)
// know exactly which processes belong to this cluster.
type state struct {
	Dir    string         `json:"dir"`
	Binary string         `json:"binary"`
	Ports  map[string]int `json:"ports"`
	PIDs   map[string]int `json:"pids"`
	// Argv of each component, so `restart` can start it again identically.
	Argv       map[string][]string `json:"argv"`
	Kubeconfig string              `json:"kubeconfig"`
	StartedAt  time.Time           `json:"startedAt"`
	// Components in start order (the real node's only when it runs).
	Components []string `json:"components"`
}

// Control-plane components in start order; `down` stops them in reverse.
var componentOrder = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

type upOptions struct {
	dir       string
	kwok      string
	kwokNodes int
	timeout   time.Duration
	realNode  bool
	images    string
	registry  string
}

func parseUpFlags(name string, args []string) (*upOptions, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	o := &upOptions{}
	fs.StringVar(&o.dir, "state", ".cluster", "directory for the cluster's state, logs and kubeconfig")
	fs.StringVar(&o.kwok, "kwok", filepath.Join(filepath.Dir(self), "kwok"), "path to the kwok binary")
	fs.IntVar(&o.kwokNodes, "kwok-nodes", 2, "number of KWOK (simulated) nodes")
	fs.DurationVar(&o.timeout, "timeout", 4*time.Minute, "how long to wait for the cluster to work")
	fs.BoolVar(&o.realNode, "real-node", true, "also run a real node (containerd, runc, kubelet, kube-proxy) as real-0")
	fs.StringVar(&o.images, "images", filepath.Join(filepath.Dir(self), "images"), "directory of OCI image archives to import into the real node")
	fs.StringVar(&o.registry, "registry", "", "the registry binary the real node pulls from (tools/oci/bin/zl-registry); needed with --real-node")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(o.dir)
	if err != nil {
		return nil, err
	}
	o.dir = abs
	return o, nil
}

func runUp(args []string) int {
	o, err := parseUpFlags("up", args)
	if err != nil {
		return 2
	}
	start := time.Now()
	if st, err := loadState(o.dir); err == nil {
		problem := st.health()
		if _, node := st.PIDs["containerd"]; problem == "" && node && st.PIDs["registry"] == 0 {
			problem = "its real node has no registry (started by an older zl-cluster)"
		}
		if problem == "" {
			fmt.Printf("zl-cluster: already running (state %s)\n", o.dir)
			if _, ok := st.PIDs["containerd"]; ok {
				// Images may have been rebuilt since: importing is cheap when unchanged.
				if err := st.importImages(o.images); err != nil {
					fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
					return 1
				}
			}
			printExport(st)
			return 0
		} else {
			fmt.Printf("zl-cluster: previous cluster is unhealthy (%s); replacing it\n", problem)
		}
		st.stop()
	}
	if err := os.RemoveAll(o.dir); err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: cannot clear %s: %v\n", o.dir, err)
		return 1
	}
	st, err := bringUp(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
		fmt.Fprintf(os.Stderr, "zl-cluster: component logs are in %s\n", filepath.Join(o.dir, "logs"))
		if st != nil {
			st.stop()
		}
		return 1
	}
	fmt.Printf("zl-cluster: cluster ready in %.1fs (logs: %s)\n", time.Since(start).Seconds(), filepath.Join(o.dir, "logs"))
	printExport(st)
	return 0
}

func printExport(st *state) {
	fmt.Printf("export KUBECONFIG=%s\n", st.Kubeconfig)
}

func bringUp(o *upOptions) (*state, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"logs", "pki", "etcd", "config"} {
		if err := os.MkdirAll(filepath.Join(o.dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	if o.realNode {
		if why := realNodePreflight(); why != "" {
			return nil, fmt.Errorf("cannot start the real node: %s (use --real-node=false for a KWOK-only cluster)", why)
		}
	}
	ports, err := freePorts("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
		"kubelet", "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics")
	if err != nil {
		return nil, fmt.Errorf("allocating ports: %w", err)
	}
	st := &state{Dir: o.dir, Binary: self, Ports: ports, PIDs: map[string]int{}, Argv: map[string][]string{}, StartedAt: time.Now(),
		Kubeconfig: filepath.Join(o.dir, "kubeconfig")}
	_, svcNet, _ := net.ParseCIDR(serviceCIDR)
	serviceIP := make(net.IP, 4)
	copy(serviceIP, svcNet.IP.To4())
	serviceIP[3]++
	st.Components = append([]string{}, componentOrder...)
	// Without the real node everything is loopback. With it, the API server
	// serves on the bridge's host address so pods reach it through the
	// `kubernetes` Service (an Endpoint may not be a loopback address).
	apiAddr := "127.0.0.1"
	if o.realNode {
		apiAddr = realHostIP
		st.Components = append(st.Components, realComponents...)
		if err := setupHostNetwork(); err != nil {
			return st, fmt.Errorf("real node network: %w", err)
		}
	}
	pki, err := makePKI(filepath.Join(o.dir, "pki"), serviceIP, net.ParseIP(realHostIP))
	if err != nil {
		return nil, fmt.Errorf("making certificates: %w", err)
	}
	server := fmt.Sprintf("https://%s:%d", apiAddr, ports["kube-apiserver"])
	cfgDir := filepath.Join(o.dir, "config")
	for _, kc := range []struct {
		path string
		user string
		kp   *keyPair
	}{
		{st.Kubeconfig, "admin", pki.admin},
		{filepath.Join(cfgDir, "controller-manager.kubeconfig"), "controller-manager", pki.controllerManager},
		{filepath.Join(cfgDir, "scheduler.kubeconfig"), "scheduler", pki.scheduler},
	} {
		if err := writeKubeconfig(kc.path, server, kc.user, pki.ca, kc.kp); err != nil {
			return nil, err
		}
	}
	pkiDir := filepath.Join(o.dir, "pki")
	p := func(name string) string { return filepath.Join(pkiDir, name) }
	addr := "127.0.0.1"
	port := func(name string) string { return strconv.Itoa(ports[name]) }

	// etcd
	if err := st.spawn("etcd", self, "etcd",
		"--data-dir="+filepath.Join(o.dir, "etcd"),
		"--listen-client-url=http://"+addr+":"+port("etcd"),
		"--listen-peer-url=http://"+addr+":"+port("etcd-peer"),
	); err != nil {
		return st, err
	}
	if err := waitFor(o.timeout, "etcd to serve", func() error {
		return httpOK(fmt.Sprintf("http://%s:%s/health", addr, port("etcd")))
	}, st); err != nil {
		return st, err
	}

	// kube-apiserver
	if err := st.spawn("kube-apiserver", self, "kube-apiserver",
		"--etcd-servers=http://"+addr+":"+port("etcd"),
		"--bind-address="+apiAddr,
		"--advertise-address="+apiAddr,
		"--secure-port="+port("kube-apiserver"),
		"--tls-cert-file="+p("apiserver.crt"),
		"--tls-private-key-file="+p("apiserver.key"),
		"--client-ca-file="+p("ca.crt"),
		"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key="+p("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+p("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-cluster-ip-range="+serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p("sa.pub"),
		"--service-account-signing-key-file="+p("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,NodeRestriction,"+
			"TaintNodesByCondition,Priority,DefaultTolerationSeconds,ResourceQuota,"+
			"MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
		"--allow-privileged=true",
		// Generous limits: scale tests create thousands of objects quickly.
		"--max-requests-inflight=1000",
		"--max-mutating-requests-inflight=500",
		"--profiling=false",
		"--cert-dir="+filepath.Join(o.dir, "pki", "apiserver-generated"),
	); err != nil {
		return st, err
	}
	admin, err := clientFor(st.Kubeconfig)
	if err != nil {
		return st, err
	}
	ctx := context.Background()
	if err := waitFor(o.timeout, "kube-apiserver /readyz", func() error {
		body, err := admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%v %s", err, body)
		}
		return nil
	}, st); err != nil {
		return st, err
	}

	// Controller manager, scheduler and KWOK start together.
	cmKubeconfig := filepath.Join(cfgDir, "controller-manager.kubeconfig")
	if err := st.spawn("kube-controller-manager", self, "kube-controller-manager",
		"--kubeconfig="+cmKubeconfig,
		"--authentication-kubeconfig="+cmKubeconfig,
		"--authorization-kubeconfig="+cmKubeconfig,
		"--bind-address="+addr,
		"--secure-port="+port("kube-controller-manager"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+p("sa.key"),
		"--root-ca-file="+p("ca.crt"),
		"--cluster-signing-cert-file="+p("ca.crt"),
		"--cluster-signing-key-file="+p("ca.key"),
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--profiling=false",
	); err != nil {
		return st, err
	}
	schedKubeconfig := filepath.Join(cfgDir, "scheduler.kubeconfig")
	schedConfig := filepath.Join(cfgDir, "scheduler.yaml")
	if err := os.WriteFile(schedConfig, []byte(fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
`, schedKubeconfig)), 0o600); err != nil {
		return st, err
	}
	if err := st.spawn("kube-scheduler", self, "kube-scheduler",
		"--config="+schedConfig,
		"--authentication-kubeconfig="+schedKubeconfig,
		"--authorization-kubeconfig="+schedKubeconfig,
		"--bind-address="+addr,
		"--secure-port="+port("kube-scheduler"),
	); err != nil {
		return st, err
	}
	kwokConfig := filepath.Join(cfgDir, "kwok.yaml")
	// An explicit (empty) configuration keeps kwok from reading ~/.kwok and
	// makes it use its built-in node and pod stages.
	if err := os.WriteFile(kwokConfig, []byte("apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"), 0o600); err != nil {
		return st, err
	}
	if _, err := os.Stat(o.kwok); err != nil {
		return st, fmt.Errorf("kwok binary not found at %s (run tests/cluster/build.sh): %w", o.kwok, err)
	}
	if err := st.spawn("kwok", o.kwok, "",
		"--kubeconfig="+st.Kubeconfig,
		"--config="+kwokConfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr="+kwokPodCIDR,
		"--node-ip="+kwokNodeIP,
		"--node-lease-duration-seconds=40",
		"--server-address="+addr+":"+port("kwok"),
	); err != nil {
		return st, err
	}
	if err := st.save(); err != nil {
		return st, err
	}
	if o.realNode {
		if err := startRealNode(o, st, pki, server); err != nil {
			return st, err
		}
	}
	for i := 0; i < o.kwokNodes; i++ {
		if err := createKwokNode(ctx, admin, fmt.Sprintf("kwok-%d", i)); err != nil {
			return st, err
		}
	}

	// "Really works": nodes Ready (KWOK), the service-account controller ran
	// (controller manager), and both components answer their health checks.
	checks := []struct {
		what string
		fn   func() error
	}{
		{"kube-controller-manager /healthz", func() error {
			return httpOK(fmt.Sprintf("https://%s:%s/healthz", addr, port("kube-controller-manager")))
		}},
		{"kube-scheduler /healthz", func() error {
			return httpOK(fmt.Sprintf("https://%s:%s/healthz", addr, port("kube-scheduler")))
		}},
		{"the default ServiceAccount", func() error {
			_, err := admin.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			return err
		}},
		{"KWOK nodes to be Ready", func() error {
			nodes, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: kwokNodeLabel + "=kwok"})
			if err != nil {
				return err
			}
			ready := 0
			for _, n := range nodes.Items {
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
			if ready < o.kwokNodes {
				return fmt.Errorf("%d of %d Ready", ready, o.kwokNodes)
			}
			return nil
		}},
	}
	for _, c := range checks {
		if err := waitFor(o.timeout, c.what, c.fn, st); err != nil {
			return st, err
		}
	}
	if o.realNode {
		if err := waitRealNodeReady(ctx, o, st); err != nil {
			return st, err
		}
	}
	return st, nil
}

// createKwokNode registers a simulated node. KWOK manages nodes carrying the
// kwok.x-k8s.io/node=fake annotation; it heartbeats them and runs their pods.
func createKwokNode(ctx context.Context, c kubernetes.Interface, name string) error {
	qty := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("2000"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				kwokNodeLabel:            "kwok",
				"kubernetes.io/hostname": name,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		Status: corev1.NodeStatus{Capacity: qty, Allocatable: qty},
	}
	_, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (st *state) spawn(name, binary, subcommand string, args ...string) error {
	logPath := filepath.Join(st.Dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	if subcommand != "" {
		args = append([]string{subcommand}, args...)
	}
	st.Argv[name] = append([]string{binary}, args...)
	return st.start(name, logf)
}

func (st *state) start(name string, logf *os.File) error {
	argv := st.Argv[name]
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = st.Dir
	// Own session: the cluster outlives the shell that started it and is not
	// hit by the terminal's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	st.PIDs[name] = cmd.Process.Pid
	fmt.Printf("zl-cluster: started %-24s pid %-7d log %s\n", name, cmd.Process.Pid, logf.Name())
	// Record every PID at once so a failure half-way still lets `down` clean up.
	if err := st.save(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

func (st *state) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(st.Dir, "cluster.json"), b, 0o600)
}

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		return nil, err
	}
	st := &state{}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, err
	}
	return st, nil
}

// ours reports whether pid is still a process this cluster started: every
// component's command line names the state directory, so a recycled PID is
// never mistaken for one of ours.
func (st *state) ours(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(string(b), st.Dir)
}

// health returns "" when every component runs and the API server is ready.
func (st *state) health() string {
	for _, name := range st.Components {
		pid, ok := st.PIDs[name]
		if !ok || !st.ours(pid) {
			return name + " is not running"
		}
	}
	c, err := clientFor(st.Kubeconfig)
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return "kube-apiserver is not ready: " + err.Error()
	}
	return ""
}

func (st *state) stop() {
	st.stopRealNode()
	for i := len(componentOrder) - 1; i >= 0; i-- {
		st.stopOne(componentOrder[i])
	}
}

func (st *state) stopOne(name string) {
	pid, ok := st.PIDs[name]
	if !ok || !st.ours(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	// kube-apiserver stops serving at once on SIGTERM but can linger for many
	// seconds afterwards; this is disposable test state, so don't wait long.
	deadline := time.Now().Add(5 * time.Second)
	for st.ours(pid) && time.Now().Before(deadline) {
		reap(pid)
		time.Sleep(50 * time.Millisecond)
	}
	if st.ours(pid) {
		fmt.Printf("zl-cluster: %s (pid %d) still running 5s after SIGTERM; killing\n", name, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for st.ours(pid) && time.Now().Before(deadline.Add(5*time.Second)) {
			reap(pid)
			time.Sleep(50 * time.Millisecond)
		}
	}
	fmt.Printf("zl-cluster: stopped %s (pid %d)\n", name, pid)
}

// reap collects pid if it is our child (only when `up` itself fails half-way);
// otherwise the process has a different parent and this is a no-op.
func reap(pid int) {
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
}

func runDown(args []string) int {
	o, err := parseUpFlags("down", args)
	if err != nil {
		return 2
	}
	st, err := loadState(o.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "zl-cluster: reading state: %v (removing it anyway)\n", err)
	}
	if st != nil {
		st.stop()
	}
	if err := os.RemoveAll(o.dir); err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: removing %s: %v\n", o.dir, err)
		return 1
	}
	fmt.Printf("zl-cluster: removed %s\n", o.dir)
	return 0
}

func runStatus(args []string) int {
	o, err := parseUpFlags("status", args)
	if err != nil {
		return 2
	}
	st, err := loadState(o.dir)
	if err != nil {
		fmt.Printf("zl-cluster: not running (no state in %s)\n", o.dir)
		return 1
	}
	if problem := st.health(); problem != "" {
		fmt.Printf("zl-cluster: unhealthy: %s\n", problem)
		return 1
	}
	fmt.Printf("zl-cluster: running since %s\n", st.StartedAt.Format(time.RFC3339))
	printExport(st)
	return 0
}

func writeKubeconfig(path, server, user string, ca, kp *keyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["zen-lead-local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca.certPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.certPEM, ClientKeyData: kp.keyPEM}
	cfg.Contexts["zen-lead-local"] = &clientcmdapi.Context{Cluster: "zen-lead-local", AuthInfo: user}
	cfg.CurrentContext = "zen-lead-local"
	return clientcmd.WriteToFile(*cfg, path)
}

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(rc)
}

// freePorts reserves distinct loopback ports; all listeners are held until
// every port is chosen, so no two names get the same one.
func freePorts(names ...string) (map[string]int, error) {
	out := map[string]int{}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for _, n := range names {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out[n] = l.Addr().(*net.TCPAddr).Port
	}
	return out, nil
}

var insecureLoopback = &http.Client{
	Timeout: 3 * time.Second,
	// Health endpoints of the controller manager and scheduler use their own
	// self-signed serving certificates; this is loopback-only liveness.
	Transport: &http.Transport{TLSClientConfig: insecureTLS()},
}

func httpOK(url string) error {
	resp, err := insecureLoopback.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// waitFor polls fn until it succeeds or the deadline passes. If a component
// has died meanwhile it says so at once instead of waiting out the deadline.
func waitFor(timeout time.Duration, what string, fn func() error, st *state) error {
	start := time.Now()
	deadline := start.Add(timeout)
	lastReport := start
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			fmt.Printf("zl-cluster: %-36s ok after %.1fs\n", what, time.Since(start).Seconds())
			return nil
		}
		for name, pid := range st.PIDs {
			if !st.ours(pid) {
				reap(pid)
				return fmt.Errorf("%s exited while waiting for %s; see %s", name, what,
					filepath.Join(st.Dir, "logs", name+".log"))
			}
		}
		if time.Since(lastReport) > 10*time.Second {
			fmt.Printf("zl-cluster: still waiting for %s (%.0fs): %v\n", what, time.Since(start).Seconds(), err)
			lastReport = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s waiting for %s: %v", timeout, what, err)
}

// runRestart stops one component and starts it again with the same command
// line, for fault-injection tests ("the API server restarts").
func runRestart(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: zl-cluster restart [--state DIR] COMPONENT")
		return 2
	}
	name := args[len(args)-1]
	o, err := parseUpFlags("restart", args[:len(args)-1])
	if err != nil {
		return 2
	}
	st, err := loadState(o.dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: no cluster state in %s: %v\n", o.dir, err)
		return 1
	}
	if _, ok := st.Argv[name]; !ok {
		fmt.Fprintf(os.Stderr, "zl-cluster: unknown component %q (one of %s)\n", name, strings.Join(st.Components, ", "))
		return 2
	}
	start := time.Now()
	st.stopOne(name)
	logf, err := os.OpenFile(filepath.Join(st.Dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
		return 1
	}
	defer logf.Close()
	if err := st.start(name, logf); err != nil {
		fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
		return 1
	}
	if name == "kube-apiserver" {
		admin, err := clientFor(st.Kubeconfig)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
			return 1
		}
		if err := waitFor(o.timeout, "kube-apiserver /readyz", func() error {
			_, err := admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
			return err
		}, st); err != nil {
			fmt.Fprintf(os.Stderr, "zl-cluster: %v\n", err)
			return 1
		}
	}
	fmt.Printf("zl-cluster: restarted %s in %.1fs\n", name, time.Since(start).Seconds())
	return 0
}

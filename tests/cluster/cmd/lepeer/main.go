// lepeer is the reference peer zen-lead is measured against: a process that
// campaigns for a Lease with client-go's leaderelection package at its
// documented defaults (lease 15s, renew deadline 10s, retry 2s) and
// ReleaseOnCancel, exactly as a typical controller would.
//
// It prints one JSON line per event on stdout so a benchmark harness can time
// hand-offs:
//
//	{"event":"started","id":"a","unixNano":...}
//	{"event":"leading","id":"a","unixNano":...}      OnStartedLeading
//	{"event":"stopped_leading","id":"a","unixNano":...}
//	{"event":"new_leader","id":"a","leader":"b","unixNano":...}
//	{"event":"exit","id":"a","requests":N,"unixNano":...}
//
// "requests" counts every HTTP request the elector sent to the API server, so
// a harness can compute a follower's steady-state request rate.
//
// As the peer of the overlap checker (tests/overlap.rs) it runs in a pod: no
// --kubeconfig (in-cluster config), --id from $POD_NAME, --record appends
// {"event":"start"|"stop","name":id,"mono":CLOCK_MONOTONIC ns} when it starts
// and stops leading (comparable with every process on the host), and
// --exit-on-loss exits 1 when leadership is lost, as a typical controller
// does (klog.Fatalf("leaderelection lost")). With --counters-record it also
// does the overlap checker's `api` work while it leads (internal/counters:
// the same increments the zen-lead `api` pool makes through its gate, here
// straight to the API server), recorded per write attempt to that file.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/kube-zen/zen-lead/tests/cluster/internal/counters"
)

var (
	out      = json.NewEncoder(os.Stdout)
	outMu    sync.Mutex
	requests atomic.Int64
)

func emit(fields map[string]any) {
	fields["unixNano"] = time.Now().UnixNano()
	outMu.Lock()
	defer outMu.Unlock()
	_ = out.Encode(fields)
}

type countingTransport struct{ next http.RoundTripper }

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	requests.Add(1)
	return c.next.RoundTrip(r)
}

func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// record appends one start/stop line to path (no-op without --record).
func record(path, id, event string) {
	if path == "" {
		return
	}
	line, _ := json.Marshal(map[string]any{"event": event, "name": id, "mono": monotonic(), "unixNano": time.Now().UnixNano()})
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lepeer: record: %v\n", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// appendLine appends one JSON line to path.
func appendLine(path string, fields map[string]any) {
	line, _ := json.Marshal(fields)
	recordMu.Lock()
	defer recordMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lepeer: record: %v\n", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

var recordMu sync.Mutex

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "path to a kubeconfig")
	namespace := flag.String("namespace", "default", "namespace of the Lease")
	name := flag.String("lease", "lepeer", "name of the Lease")
	id := flag.String("id", os.Getenv("POD_NAME"), "this candidate's identity (default $POD_NAME; required)")
	recordPath := flag.String("record", "", "file to append start/stop-leading lines to (CLOCK_MONOTONIC)")
	exitOnLoss := flag.Bool("exit-on-loss", false, "exit 1 when leadership is lost, as controllers do")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "client-go LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "client-go RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "client-go RetryPeriod")
	countersRecord := flag.String("counters-record", "", "while leading, increment the overlap checker's counters and record each write here")
	countersPrefix := flag.String("counters-prefix", "peer", "the counters are ConfigMaps PREFIX-cas and PREFIX-blind")
	countersInterval := flag.Duration("counters-interval", 200*time.Millisecond, "time between two rounds of counter writes")
	flag.Parse()
	if *id == "" {
		fmt.Fprintln(os.Stderr, "lepeer: --id is required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lepeer: kubeconfig: %v\n", err)
		os.Exit(1)
	}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt} }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lepeer: client: %v\n", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; cancel() }()

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: *namespace, Name: *name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *id},
	}
	emit(map[string]any{"event": "started", "id": *id})
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   *leaseDuration,
		RenewDeadline:   *renewDeadline,
		RetryPeriod:     *retryPeriod,
		ReleaseOnCancel: true,
		Name:            *name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leading context.Context) {
				record(*recordPath, *id, "start")
				emit(map[string]any{"event": "leading", "id": *id})
				if *countersRecord != "" {
					// client-go cancels this context when renewing fails
					// past the renew deadline; nothing fences what is in
					// flight then.
					cfg := counters.Config{Namespace: *namespace, Pod: *id, UID: os.Getenv("POD_UID"), Interval: *countersInterval, Prefix: *countersPrefix}
					counters.Run(leading, client, cfg, func(f map[string]any) { appendLine(*countersRecord, f) })
				}
			},
			OnStoppedLeading: func() {
				record(*recordPath, *id, "stop")
				emit(map[string]any{"event": "stopped_leading", "id": *id})
				if *exitOnLoss && ctx.Err() == nil {
					os.Exit(1)
				}
			},
			OnNewLeader: func(leader string) {
				emit(map[string]any{"event": "new_leader", "id": *id, "leader": leader})
			},
		},
	})
	emit(map[string]any{"event": "exit", "id": *id, "requests": requests.Load()})
}

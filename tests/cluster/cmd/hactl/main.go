// hactl is the client-go controller the `api` activation tests run as three
// replicas: a typical controller with no leader election of its own, built
// only from client-go's standard parts (in-cluster config, a shared informer,
// a rate-limited work queue), so it shows what an unmodified operator does
// behind zen-lead's API gate.
//
// It does two kinds of writes:
//   - heartbeat: every --interval it merge-patches the ConfigMap --heartbeat
//     with a counter and its pod name (creating it if its cache has none);
//   - reconcile: every ConfigMap labelled hactl.zen-lead.io/input=true gets a
//     copy named <name>-out (create or update), driven by the informer.
//
// With --counters it does neither: it runs the overlap checker's work
// (internal/counters: a compare-and-set and a blind increment of two
// ConfigMaps, every --interval), recorded per write attempt.
//
// Every write uses the pod's name as field manager, so the objects'
// managedFields say which replicas' writes reached the API server. Each write
// attempt, as client-go returns it (after its own retries), is appended as a
// JSON line to --record: CLOCK_MONOTONIC at start and end (comparable across
// all processes of the host), pod, ok, HTTP status code, the resourceVersion
// the server returned. Every second it also records what its informer cache
// holds (the heartbeat counter it sees), which shows followers stay warm.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/kube-zen/zen-lead/tests/cluster/internal/counters"
)

const inputLabel = "hactl.zen-lead.io/input"

func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

type recorder struct {
	mu   sync.Mutex
	path string
	pod  string
}

func (r *recorder) emit(fields map[string]any) {
	fields["name"] = r.pod
	if _, ok := fields["mono"]; !ok {
		fields["mono"] = monotonic()
	}
	fields["unixNano"] = time.Now().UnixNano()
	line, _ := json.Marshal(fields)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.path == "" {
		fmt.Println(string(line))
		return
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hactl: record: %v\n", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// write records one write attempt and its outcome.
func (r *recorder) write(kind, object string, start int64, obj metav1.Object, err error) {
	fields := map[string]any{"event": "write", "kind": kind, "object": object, "start": start, "ok": err == nil}
	if err != nil {
		fields["error"] = err.Error()
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			fields["code"] = status.Status().Code
		} else {
			fields["code"] = 0
		}
	} else {
		fields["code"] = 200
		if obj != nil {
			// Revisions are etcd's global counter: they order every
			// successful write of all replicas.
			if rv, perr := strconv.ParseInt(obj.GetResourceVersion(), 10, 64); perr == nil {
				fields["rv"] = rv
			}
		}
	}
	r.emit(fields)
}

type controller struct {
	client    kubernetes.Interface
	lister    listersv1.ConfigMapLister
	queue     workqueue.TypedRateLimitingInterface[string]
	ns, pod   string
	heartbeat string
	rec       *recorder
}

func (c *controller) beat(ctx context.Context, counter int) {
	start := monotonic()
	opts := metav1.PatchOptions{FieldManager: c.pod}
	if _, err := c.lister.ConfigMaps(c.ns).Get(c.heartbeat); apierrors.IsNotFound(err) {
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: c.heartbeat},
			Data:       map[string]string{"counter": strconv.Itoa(counter), "writer": c.pod},
		}
		got, err := c.client.CoreV1().ConfigMaps(c.ns).Create(ctx, cm, metav1.CreateOptions{FieldManager: c.pod})
		if err == nil || !apierrors.IsAlreadyExists(err) {
			c.rec.write("heartbeat", c.heartbeat, start, got, err)
			return
		}
		start = monotonic()
	}
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{"counter": strconv.Itoa(counter), "writer": c.pod}})
	got, err := c.client.CoreV1().ConfigMaps(c.ns).Patch(ctx, c.heartbeat, types.MergePatchType, patch, opts)
	c.rec.write("heartbeat", c.heartbeat, start, got, err)
}

// reconcile makes <input>-out a copy of the input's data.
func (c *controller) reconcile(ctx context.Context, name string) error {
	in, err := c.lister.ConfigMaps(c.ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	outName := name + "-out"
	out, err := c.lister.ConfigMaps(c.ns).Get(outName)
	start := monotonic()
	switch {
	case apierrors.IsNotFound(err):
		want := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: outName}, Data: in.Data}
		got, err := c.client.CoreV1().ConfigMaps(c.ns).Create(ctx, want, metav1.CreateOptions{FieldManager: c.pod})
		c.rec.write("output", outName, start, got, err)
		return err
	case err != nil:
		return err
	case equality.Semantic.DeepEqual(out.Data, in.Data):
		return nil
	default:
		want := out.DeepCopy()
		want.Data = in.Data
		got, err := c.client.CoreV1().ConfigMaps(c.ns).Update(ctx, want, metav1.UpdateOptions{FieldManager: c.pod})
		c.rec.write("output", outName, start, got, err)
		return err
	}
}

func (c *controller) worker(ctx context.Context) {
	for {
		key, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		if err := c.reconcile(ctx, key); err != nil {
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

func (c *controller) enqueue(obj any) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		if tomb, isTomb := obj.(cache.DeletedFinalStateUnknown); isTomb {
			cm, ok = tomb.Obj.(*corev1.ConfigMap)
		}
	}
	if !ok {
		return
	}
	switch {
	case cm.Labels[inputLabel] == "true":
		c.queue.Add(cm.Name)
	case len(cm.Name) > 4 && cm.Name[len(cm.Name)-4:] == "-out":
		c.queue.Add(cm.Name[:len(cm.Name)-4])
	}
}

func main() {
	ns := flag.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace to work in (default $POD_NAMESPACE)")
	pod := flag.String("name", os.Getenv("POD_NAME"), "this replica's name, also the field manager (default $POD_NAME)")
	record := flag.String("record", "", "file to append JSON lines to (default: stdout)")
	interval := flag.Duration("interval", 100*time.Millisecond, "time between heartbeat writes")
	heartbeat := flag.String("heartbeat", "heartbeat", "name of the heartbeat ConfigMap")
	countersMode := flag.Bool("counters", false, "only increment the overlap checker's counters (internal/counters)")
	uid := flag.String("uid", os.Getenv("POD_UID"), "this replica's pod UID, in --counters records (default $POD_UID)")
	prefix := flag.String("counters-prefix", "counter", "with --counters: the counters are ConfigMaps PREFIX-cas and PREFIX-blind")
	flag.Parse()
	if *ns == "" || *pod == "" {
		fmt.Fprintln(os.Stderr, "hactl: --namespace and --name (or POD_NAMESPACE, POD_NAME) are required")
		os.Exit(2)
	}
	rec := &recorder{path: *record, pod: *pod}

	// Exactly what an operator does: in-cluster config, so the
	// KUBERNETES_SERVICE_* variables and the service-account directory decide
	// where requests go. The default client-side rate limit (5 QPS) would
	// throttle the heartbeat, so it is raised.
	cfg, err := rest.InClusterConfig()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hactl: in-cluster config: %v\n", err)
		os.Exit(1)
	}
	cfg.QPS, cfg.Burst, cfg.UserAgent = 100, 200, "hactl/"+*pod
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hactl: client: %v\n", err)
		os.Exit(1)
	}
	rec.emit(map[string]any{"event": "start", "host": cfg.Host})

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if *countersMode {
		cfg := counters.Config{Namespace: *ns, Pod: *pod, UID: *uid, Interval: *interval, Prefix: *prefix}
		counters.Run(ctx, client, cfg, rec.emit)
		rec.emit(map[string]any{"event": "stop"})
		return
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(*ns))
	informer := factory.Core().V1().ConfigMaps()
	c := &controller{
		client: client, lister: informer.Lister(), ns: *ns, pod: *pod, heartbeat: *heartbeat, rec: rec,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	_, _ = informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
		DeleteFunc: c.enqueue,
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		os.Exit(1)
	}
	all, _ := c.lister.ConfigMaps(*ns).List(labels.Everything())
	rec.emit(map[string]any{"event": "synced", "configMaps": len(all)})
	for range 2 {
		go c.worker(ctx)
	}
	go func() {
		// What the cache sees, once a second: a follower's cache follows the
		// leader's heartbeat although it writes nothing.
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fields := map[string]any{"event": "cache"}
				if cm, err := c.lister.ConfigMaps(*ns).Get(*heartbeat); err == nil {
					fields["writer"] = cm.Data["writer"]
					fields["counter"] = cm.Data["counter"]
				}
				rec.emit(fields)
			}
		}
	}()

	counter := 0
	next := time.Now()
	for ctx.Err() == nil {
		counter++
		c.beat(ctx, counter)
		next = next.Add(*interval)
		if wait := time.Until(next); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		} else {
			// A write took longer than the interval (client-go retrying a
			// refused write): start the next one at once, do not catch up.
			next = time.Now()
		}
	}
	c.queue.ShutDown()
	rec.emit(map[string]any{"event": "stop"})
}

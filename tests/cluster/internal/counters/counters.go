// Package counters is the work the overlap checker (tests/overlap.rs) gives
// the replicas of an `api` pool and of the client-go peer while they are
// active: two counters in ConfigMaps, incremented by read-modify-write.
//
//   - PREFIX-cas: GET, then PUT with the resourceVersion read (a
//     precondition), so the API server refuses the write if anyone wrote in
//     between;
//   - PREFIX-blind: GET, then a merge patch with no precondition, so two
//     writers that read the same value both "succeed" and one increment is
//     lost.
//
// Every write attempt is recorded with CLOCK_MONOTONIC at its start and end,
// whether the API server acknowledged it, the value written and the
// resourceVersion it got (etcd's revision: one order for every write and
// every Lease update), so the checker can count lost updates and the writes
// that landed while another replica held the Lease.
package counters

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Monotonic is CLOCK_MONOTONIC in nanoseconds: one clock for every process
// of the host.
func Monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

// Record receives one JSON-able line per write attempt.
type Record func(fields map[string]any)

// Config says where to write and who writes.
type Config struct {
	Namespace string
	// Pod and UID name the writer in every record.
	Pod, UID string
	// Interval between two rounds (one write to each counter).
	Interval time.Duration
	// Prefix of the two ConfigMaps' names: each system its own counters.
	Prefix string
}

// Run writes both counters every interval until ctx ends. After a failed
// write it waits one interval: a follower's writes are refused, and it must
// not flood the API server with reads.
func Run(ctx context.Context, client kubernetes.Interface, cfg Config, rec Record) {
	w := writer{client: client, cfg: cfg, rec: rec}
	for ctx.Err() == nil {
		w.increment(ctx, "cas")
		w.increment(ctx, "blind")
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Interval):
		}
	}
}

type writer struct {
	client kubernetes.Interface
	cfg    Config
	rec    Record
}

func (w *writer) increment(ctx context.Context, kind string) {
	cms := w.client.CoreV1().ConfigMaps(w.cfg.Namespace)
	name := w.cfg.Prefix + "-" + kind
	start := Monotonic()
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"value": "0"}}
		cm, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: w.cfg.Pod})
		if apierrors.IsAlreadyExists(err) {
			return // another replica created it: next round
		}
	}
	if err != nil {
		w.record(kind, start, 0, nil, err, "read")
		return
	}
	current, _ := strconv.ParseInt(cm.Data["value"], 10, 64)
	next := current + 1
	data := map[string]string{"value": strconv.FormatInt(next, 10), "writer": w.cfg.Pod}
	var got *corev1.ConfigMap
	if kind == "cas" {
		want := cm.DeepCopy()
		want.Data = data // keeps the resourceVersion read: the precondition
		got, err = cms.Update(ctx, want, metav1.UpdateOptions{FieldManager: w.cfg.Pod})
	} else {
		patch, _ := json.Marshal(map[string]any{"data": data})
		got, err = cms.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: w.cfg.Pod})
	}
	w.record(kind, start, next, got, err, "write")
}

func (w *writer) record(kind string, start, value int64, got *corev1.ConfigMap, err error, step string) {
	fields := map[string]any{
		"event": "write", "kind": kind, "start": start, "mono": Monotonic(),
		"name": w.cfg.Pod, "uid": w.cfg.UID, "ok": err == nil, "value": value, "step": step,
	}
	if err != nil {
		fields["error"] = err.Error()
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			fields["code"] = status.Status().Code
		} else {
			fields["code"] = 0
		}
	} else if got != nil {
		if rv, perr := strconv.ParseInt(got.ResourceVersion, 10, 64); perr == nil {
			fields["rv"] = rv
		}
	}
	w.rec(fields)
}

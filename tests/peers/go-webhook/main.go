// Command go-webhook is the benchmark peer of zen-lead's admission webhook:
// the same pod mutation written the usual Go way, on controller-runtime's
// webhook/admission package (decode the pod, change it, and let
// PatchResponseFromRaw compute the JSON patch). It exists only so that
// `cargo bench --bench webhook` can compare the two side by side; it is not
// part of zen-lead.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

const (
	poolKey   = "zen-lead/pool"
	joinKey   = "zen-lead/join"
	agentName = "zen-lead-agent"
	gate      = "zen-lead.io/candidate"
	injected  = "zen-lead.io/injected"
)

type injector struct {
	decoder admission.Decoder
	image   string
}

func (i *injector) Handle(_ context.Context, req admission.Request) admission.Response {
	pod := &corev1.Pod{}
	if err := i.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	pool := pod.Annotations[poolKey]
	if pool == "" || pod.Annotations[joinKey] == "false" {
		return admission.Allowed("not a pool pod")
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == agentName {
			return admission.Allowed("already injected")
		}
	}
	always := corev1.ContainerRestartPolicyAlways
	no, yes := false, true
	uid := int64(65532)
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("zl-agent")}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
		}
	}
	agent := corev1.Container{
		Name:          agentName,
		Image:         i.image,
		Args:          []string{"agent"},
		RestartPolicy: &always,
		Env: []corev1.EnvVar{
			{Name: "ZEN_LEAD_POOL", Value: pool},
			fieldEnv("ZEN_LEAD_POD_NAME", "metadata.name"),
			fieldEnv("ZEN_LEAD_POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("ZEN_LEAD_POD_UID", "metadata.uid"),
			fieldEnv("ZEN_LEAD_IDENTITY", "metadata.annotations['zen-lead/identity']"),
		},
		Ports: []corev1.ContainerPort{{Name: "zl-agent", ContainerPort: 9468, Protocol: corev1.ProtocolTCP}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		StartupProbe:   probe("/startz", 1, 2147483647),
		ReadinessProbe: probe("/readyz", 5, 3),
		LivenessProbe:  probe("/livez", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	pod.Spec.InitContainers = append([]corev1.Container{agent}, pod.Spec.InitContainers...)
	pod.Spec.ReadinessGates = append(pod.Spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: gate})
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[poolKey] = pool
	pod.Annotations[injected] = "go-peer"
	marshaled, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, marshaled)
}

func main() {
	host := flag.String("host", "127.0.0.1", "listen address (loopback only)")
	port := flag.Int("port", 0, "listen port")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	flag.Parse()
	if *port == 0 || *certDir == "" {
		fmt.Fprintln(os.Stderr, "go-webhook: --port and --cert-dir are required")
		os.Exit(2)
	}
	// Per-request logging would dominate the measurement.
	ctrl.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := webhook.NewServer(webhook.Options{Host: *host, Port: *port, CertDir: *certDir})
	server.Register("/mutate", &webhook.Admission{Handler: &injector{decoder: admission.NewDecoder(scheme), image: "zen-lead:bench"}})
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := server.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "go-webhook:", err)
		os.Exit(1)
	}
}

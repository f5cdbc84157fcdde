// pbbodies writes the request bodies client-go sends for writes of built-in
// types, which it encodes as protobuf (its typed clients prefer it since
// 1.33), into tests/golden/gate/. The gate's pure classifier
// (src/agent/gate/classify.rs) is tested against them: it must find the
// resourceVersion precondition in these bytes as it does in JSON.
//
//	go run ./cmd/pbbodies ../golden/gate   (from tests/cluster)
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pbbodies DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	rv := "48151"
	configMap := func(rv string) *corev1.ConfigMap {
		return &corev1.ConfigMap{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{
				Name: "zla-cas", Namespace: "shop", UID: "0d7f6a51-5c1e-4c1b-9d0e-3f2a8b7c6d5e",
				ResourceVersion: rv, Labels: map[string]string{"app": "zla"},
			},
			Data: map[string]string{"value": "42", "writer": "zla-0"},
		}
	}
	deleteOptions := func(pre *metav1.Preconditions) *metav1.DeleteOptions {
		return &metav1.DeleteOptions{
			TypeMeta:      metav1.TypeMeta{APIVersion: "v1", Kind: "DeleteOptions"},
			Preconditions: pre,
		}
	}
	uid := types.UID("0d7f6a51-5c1e-4c1b-9d0e-3f2a8b7c6d5e")
	bodies := map[string]runtime.Object{
		"put-configmap-with-rv.pb":          configMap(rv),
		"put-configmap-without-rv.pb":       configMap(""),
		"delete-options-with-rv.pb":         deleteOptions(&metav1.Preconditions{ResourceVersion: &rv}),
		"delete-options-with-uid-only.pb":   deleteOptions(&metav1.Preconditions{UID: &uid}),
		"delete-options-without-precond.pb": deleteOptions(nil),
	}
	ser := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	for name, obj := range bodies {
		var buf bytes.Buffer
		if err := ser.Encode(obj, &buf); err != nil {
			fmt.Fprintf(os.Stderr, "encode %s: %v\n", name, err)
			os.Exit(1)
		}
		if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "write %s: %v\n", name, err)
			os.Exit(1)
		}
	}
}

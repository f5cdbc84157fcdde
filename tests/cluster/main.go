// zl-cluster is the local Kubernetes control plane zen-lead is tested against.
//
// One multi-call binary holds etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and kubectl, all built from the Go modules of one Kubernetes
// release. It dispatches on the name it was invoked as (so a `kubectl` symlink
// works) or on its first argument. Every component still runs as its own
// process: `zl-cluster up` re-executes this binary once per component.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{
	"etcd":                    {"embedded etcd server (single member)", runEtcd},
	"kube-apiserver":          {"Kubernetes API server", runAPIServer},
	"kube-controller-manager": {"Kubernetes controller manager", runControllerManager},
	"kube-scheduler":          {"Kubernetes scheduler", runScheduler},
	"kubectl":                 {"kubectl", runKubectl},
	"kubelet":                 {"kubelet (the real node)", runKubelet},
	"kube-proxy":              {"kube-proxy (iptables mode, the real node)", runKubeProxy},
	"up":                      {"start the local cluster (idempotent)", runUp},
	"down":                    {"stop the processes `up` started and remove the state", runDown},
	"status":                  {"report whether the local cluster is up", runStatus},
	"restart":                 {"stop one component and start it again (fault injection)", runRestart},
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := commands[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "zl-cluster: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	// Components parse os.Args themselves (cobra, kubectl plugins), so present
	// them with the argv they would have had as standalone binaries.
	os.Args = append([]string{name}, args...)
	os.Exit(cmd.run(args))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: zl-cluster COMMAND [ARGS...]   (or invoke through a symlink named after the command)")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-24s %s\n", n, commands[n].summary)
	}
}

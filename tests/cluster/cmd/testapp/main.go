// testapp is the workload the real-node tests run: it records when it runs.
//
// On start and on SIGTERM it prints a JSON line (stdout, so `kubectl logs`
// shows it) and, with --record FILE, appends the same line to FILE (a hostPath
// the test reads). Timestamps are CLOCK_MONOTONIC nanoseconds, comparable
// across all containers and host processes of the machine, plus wall time.
// It serves GET / on --listen with its pod name and start time. With
// --gate ADDR it also serves a gate a test opens from outside: GET /startz
// answers 503 until POST /open, then 200, so it can stand in for a startup
// probe the test controls. With --poll it is instead a client that records
// which pod answers each request (poll.go).
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

func main() {
	record := flag.String("record", "", "file to append start/stop lines to")
	listen := flag.String("listen", ":8080", "HTTP address")
	name := flag.String("name", os.Getenv("POD_NAME"), "name to report (default $POD_NAME)")
	stopDelay := flag.Duration("stop-delay", 0, "time to keep running after SIGTERM (to observe shutdown ordering)")
	runFor := flag.Duration("run-for", 0, "exit 0 after this long (0: until SIGTERM), e.g. for Jobs")
	gate := flag.String("gate", "", "address of the test-controlled gate (GET /startz, POST /open)")
	fetch := flag.String("fetch", "", "URL to GET once at start (TLS unverified); the status is printed as a \"fetch\" line")
	exitCode := flag.Int("exit-code", 0, "status to exit with after --run-for")
	check := flag.String("check", "", "only GET this URL and exit 0 on a 2xx/3xx answer, 1 otherwise (an exec probe)")
	pollURLs := flag.String("poll", "", "only act as a client: GET these comma-separated URLs every --poll-every and record who answered")
	pollEvery := flag.Duration("poll-every", 5*time.Millisecond, "interval of --poll")
	flag.Parse()
	if *pollURLs != "" {
		poll(splitURLs(*pollURLs), *pollEvery, *record)
		return
	}
	if *check != "" {
		client := &http.Client{Timeout: 2 * time.Second}
		resp, err := client.Get(*check)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		_ = resp.Body.Close()
		fmt.Println(resp.Status)
		if resp.StatusCode >= 200 && resp.StatusCode < 400 {
			os.Exit(0)
		}
		os.Exit(1)
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	emit := func(event string) {
		line, _ := json.Marshal(map[string]any{"event": event, "name": *name, "mono": monotonic(), "unixNano": time.Now().UnixNano()})
		fmt.Println(string(line))
		if *record == "" {
			return
		}
		f, err := os.OpenFile(*record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testapp: %v\n", err)
			return
		}
		defer f.Close()
		// One write per line: O_APPEND keeps concurrent writers' lines whole.
		_, _ = f.Write(append(line, '\n'))
	}
	started := time.Now()
	emit("start")
	if *fetch != "" {
		// $VARS are expanded so a pod spec can say https://$(KUBERNETES_SERVICE_HOST)...
		u := os.ExpandEnv(*fetch)
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test probe
		status := "error"
		if resp, err := client.Get(u); err != nil {
			status = err.Error()
		} else {
			status = resp.Status
			_ = resp.Body.Close()
		}
		line, _ := json.Marshal(map[string]any{"event": "fetch", "name": *name, "url": u, "status": status})
		fmt.Println(string(line))
	}
	srv := &http.Server{Addr: *listen, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"name": *name, "started": started})
	})}
	go func() { _ = srv.ListenAndServe() }()
	if *gate != "" {
		var open atomic.Bool
		mux := http.NewServeMux()
		mux.HandleFunc("/startz", func(w http.ResponseWriter, _ *http.Request) {
			if !open.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
		mux.HandleFunc("/open", func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			if !open.Swap(true) {
				emit("gate-open")
			}
		})
		go func() { _ = http.ListenAndServe(*gate, mux) }()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	var done <-chan time.Time
	if *runFor > 0 {
		done = time.After(*runFor)
	}
	status := 0
	select {
	case <-sig:
		emit("sigterm")
		time.Sleep(*stopDelay)
	case <-done:
		status = *exitCode
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = srv.Shutdown(ctx)
	cancel()
	emit("stop")
	os.Exit(status)
}

package main

// The --poll mode: a client inside the cluster for the routing benchmark.
// Every --poll-every it sends one GET to each URL, each on a new connection
// (so every request is routed afresh by kube-proxy, as a new client's would
// be), and appends one JSON line per answer to --record: the URL, when it
// was sent and answered (CLOCK_MONOTONIC ns) and which pod answered ("" and
// the error when none did).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func poll(urls []string, every time.Duration, record string) {
	out := os.Stdout
	if record != "" {
		f, err := os.OpenFile(record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testapp: %v\n", err)
			os.Exit(1)
		}
		defer f.Close()
		out = f
	}
	client := &http.Client{
		Timeout:   500 * time.Millisecond,
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			return
		case <-tick.C:
		}
		for _, u := range urls {
			sent := monotonic()
			from, errText := "", ""
			resp, err := client.Get(u)
			if err != nil {
				errText = err.Error()
			} else {
				var body struct {
					Name string `json:"name"`
				}
				if derr := json.NewDecoder(resp.Body).Decode(&body); derr != nil {
					errText = derr.Error()
				}
				_ = resp.Body.Close()
				from = body.Name
			}
			line, _ := json.Marshal(map[string]any{"event": "answer", "url": u, "sent": sent, "at": monotonic(), "from": from, "err": errText})
			// One write per line: the test reads while this writes.
			_, _ = out.Write(append(line, '\n'))
		}
	}
}

func splitURLs(s string) []string {
	var urls []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, os.ExpandEnv(u))
		}
	}
	return urls
}

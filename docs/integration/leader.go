// Command leader asks this pod's zen-lead agent whether the pod leads, the way
// a Go program would before doing work only the leader may do. Standard
// library only: `go run leader.go` prints "leading <token>" or
// "following <holder>" and exits 0, or exits 2 when the agent cannot be asked.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"
)

// Leader is the body of GET /v1/leader (docs/INTEGRATION.md).
type Leader struct {
	Identity     string  `json:"identity"`
	Holder       *string `json:"holder"`
	Leading      bool    `json:"leading"`
	FencingToken *int64  `json:"fencingToken"`
	Since        *string `json:"since"`
}

func ask(port string) (Leader, error) {
	client := http.Client{Timeout: 2 * time.Second}
	var l Leader
	resp, err := client.Get("http://127.0.0.1:" + port + "/v1/leader")
	if err != nil {
		return l, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return l, fmt.Errorf("agent answered %s", resp.Status)
	}
	return l, json.NewDecoder(resp.Body).Decode(&l)
}

func main() {
	port := os.Getenv("ZEN_LEAD_AGENT_PORT")
	if port == "" {
		port = "9466"
	}
	l, err := ask(port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot ask the zen-lead agent:", err)
		os.Exit(2)
	}
	if l.Leading && l.FencingToken != nil {
		fmt.Printf("leading %d\n", *l.FencingToken)
		return
	}
	holder := "<none>"
	if l.Holder != nil {
		holder = *l.Holder
	}
	fmt.Printf("following %s\n", holder)
}

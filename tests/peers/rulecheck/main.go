// rulecheck validates Prometheus rule files with Prometheus's own rule
// parser (model/rulefmt, what `promtool check rules` runs): YAML structure,
// unknown fields, PromQL expressions, label and annotation templates,
// durations. Building promtool itself would pull in every service discovery
// plugin; this module needs only the parser.
//
// Usage: rulecheck FILE...  (exit 1 and every error on stderr when a file is
// not valid; the number of rules per file on stdout otherwise).
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck FILE...")
		os.Exit(2)
	}
	// The parser's defaults, as promtool uses them: no experimental functions.
	promql := parser.NewParser(parser.Options{})
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	failed := false
	for _, file := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, logger)
		if len(errs) > 0 {
			failed = true
			for _, err := range errs {
				fmt.Fprintf(os.Stderr, "%s: %v\n", file, err)
			}
			continue
		}
		rules := 0
		for _, g := range groups.Groups {
			rules += len(g.Rules)
		}
		fmt.Printf("%s: %d groups, %d rules: ok\n", file, len(groups.Groups), rules)
	}
	if failed {
		os.Exit(1)
	}
}

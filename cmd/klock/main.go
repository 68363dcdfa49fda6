// Command klock runs a command while it holds a Kubernetes Lease.
package main

import (
	"context"
	"os"

	"github.com/klock-io/klock/internal/cli"
)

func main() {
	err := cli.Execute(context.Background(), os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, cli.Run)
	os.Exit(cli.Exit(err, os.Stderr))
}

// step-ca for the interop tests: smallstep's certificate authority built
// offline from Debian's golang-github-smallstep-certificates-dev (which ships
// the Go packages but no step-ca command). scripts/build-step-ca compiles it.
//
//	step-ca <ca.json>   serves the CA that ca.json describes
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/command"
	"go.step.sm/cli-utils/step"

	// The CA service and key manager that a ca.json with plain PEM files uses.
	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/kms/softkms"
)

func main() {
	step.Set("Smallstep CA", "debian-gocode", "offline")
	app := cli.NewApp()
	app.Name = "step-ca"
	app.Usage = "an online certificate authority (the scepproxyd tests' SCEP peer)"
	app.UsageText = commands.AppCommand.UsageText
	app.Flags = commands.AppCommand.Flags
	app.Action = commands.AppCommand.Action
	app.Commands = command.Retrieve()
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bellbuild/bellbuild/profiles/secrets"
)

// secretIn and secretOut are the standard input and output of the secret
// command (tests replace them; stderr is the flag set's output).
var (
	secretIn  io.Reader = os.Stdin
	secretOut io.Writer = os.Stdout
)

func init() {
	register(&command{
		name:    "secret",
		summary: "keep a site's secrets, encrypted with age: set, get, ls, rm, rekey, keygen",
		usage:   "set|get|ls|rm|rekey -C SITE [NAME] [flags]  |  keygen -o FILE",
		help: `A site's secrets live in SITE/secrets/: one file NAME.age for each, encrypted
with age to every public key listed in SITE/secrets/recipients.txt (the
serving host's key and the operators'). The files are safe to commit with
the site; only a private key (an identity) can read them. A site refers to
a secret as '!secret NAME' (docs/secrets.md).

  set -C SITE NAME     store a value, read from stdin (or --from FILE),
                       replacing any value NAME had. Never give the value
                       as an argument: it would be in the shell's history and
                       in ps. Nothing is stripped: 'echo pw |' stores "pw\n";
                       --trim-newline drops one trailing \n (or \r\n). From a
                       terminal, the input is not echoed; end it with Ctrl-D.
  get -C SITE NAME     print the value to stdout, exactly (needs an identity).
  ls -C SITE           list the secrets: name, size and time of the encrypted
                       file (never a value).
  rm -C SITE NAME      delete a secret.
  rekey -C SITE        re-encrypt every secret to the current recipients.txt,
                       after adding or removing a key (needs an identity that
                       can decrypt every secret). All or nothing: a file that
                       cannot be decrypted changes nothing. If interrupted,
                       each file is whole, for the old or the new keys: run
                       rekey again with an identity that decrypts both.
  keygen -o FILE       make a key pair: the private key goes to FILE (mode
                       0600, never overwritten), the public key to stdout,
                       to add to recipients.txt.

recipients.txt holds one public key a line: age1... (an age key),
age1pq1... (post-quantum; not mixed with the others) or an SSH public key
(ssh-ed25519, ssh-rsa); blank lines and # comments are ignored.

An identity is an age identity file (from keygen or age-keygen) or an SSH
private key without a passphrase: --identity FILE (repeatable), else the
file named by $BELLBUILD_AGE_IDENTITY. Names are 1 to 128 of a-z 0-9 . _ -,
starting with a letter or digit; values are at most 1 MiB.

Exit status: 0 done, 1 error (no such secret, an identity that cannot
decrypt, a damaged file, a bad recipients.txt; nothing was changed),
2 bad usage (a missing -C or NAME, a value given as an argument).

Examples:
  bellbuild secret keygen -o ~/.config/bellbuild/alice.key >> site/secrets/recipients.txt
  bellbuild secret set -C site db-password --from /run/user/1000/pw
  printf %s "$TOKEN" | bellbuild secret set -C site api-token
  bellbuild secret get -C site db-password --identity ~/.config/bellbuild/alice.key
  bellbuild secret ls -C site
  BELLBUILD_AGE_IDENTITY=~/.config/bellbuild/alice.key bellbuild secret rekey -C site`,
		setup: func(fs *flag.FlagSet) func(context.Context, []string) error {
			var o secretFlags
			fs.StringVar(&o.site, "C", "", "site `DIR` (required but for keygen: the embedded demo site has no secrets)")
			fs.StringVar(&o.from, "from", "", "set: read the value from `FILE` instead of stdin")
			fs.BoolVar(&o.trim, "trim-newline", false, "set: drop one trailing newline from the value")
			fs.Var((*listFlag)(&o.identities), "identity", "get, rekey: an identity `FILE` (repeatable; default $"+secrets.IdentityEnv+")")
			fs.StringVar(&o.out, "o", "", "keygen: write the private key to `FILE`")
			return func(ctx context.Context, args []string) error {
				if len(args) == 0 {
					return usageError(fs.Output(), "missing subcommand: set, get, ls, rm, rekey or keygen (see 'bellbuild help secret')")
				}
				o.sub = args[0]
				// Flags may come before or after the subcommand and NAME.
				rest := args[1:]
				for {
					if err := fs.Parse(rest); err != nil {
						return exitError{2}
					}
					if fs.NArg() == 0 {
						break
					}
					o.args = append(o.args, fs.Arg(0))
					rest = fs.Args()[1:]
				}
				return runSecret(ctx, o, secretIn, secretOut, fs.Output())
			}
		},
	})
}

type secretFlags struct {
	site, from, out string
	trim            bool
	identities      []string
	sub             string
	args            []string // NAME, and whatever else was given (never printed: it may be a value)
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// usageError prints a usage problem and exits 2.
func usageError(stderr io.Writer, msg string) error {
	fmt.Fprintf(stderr, "bellbuild secret: %s\n", msg)
	return exitError{2}
}

func runSecret(ctx context.Context, o secretFlags, stdin io.Reader, stdout, stderr io.Writer) error {
	// 1. Check the flags: which subcommand takes a NAME, which flags.
	wantName := map[string]bool{"set": true, "get": true, "rm": true, "ls": false, "rekey": false, "keygen": false}
	takesName, ok := wantName[o.sub]
	if !ok {
		return usageError(stderr, fmt.Sprintf("unknown subcommand %q: want set, get, ls, rm, rekey or keygen", o.sub))
	}
	switch {
	case o.sub == "set" && len(o.args) > 1:
		// Do not print the arguments: the second is likely the value.
		return usageError(stderr, "secret set takes the value from stdin or --from FILE, never as an argument (it would be in the shell's history and in ps): want only NAME")
	case takesName && len(o.args) != 1:
		return usageError(stderr, fmt.Sprintf("secret %s: want exactly one NAME", o.sub))
	case !takesName && len(o.args) > 0:
		return usageError(stderr, fmt.Sprintf("secret %s takes no arguments", o.sub))
	case o.sub == "keygen" && (o.out == "" || o.site != ""):
		return usageError(stderr, "secret keygen: want -o FILE (the private key is never printed) and no -C")
	case o.sub != "keygen" && o.site == "":
		return usageError(stderr, "secrets live in a site directory: give -C SITE (the embedded demo site has no secret store)")
	case o.sub != "keygen" && o.out != "":
		return usageError(stderr, "-o is for keygen only")
	case o.sub != "set" && (o.from != "" || o.trim):
		return usageError(stderr, "--from and --trim-newline are for set only")
	case o.sub != "get" && o.sub != "rekey" && len(o.identities) > 0:
		return usageError(stderr, "--identity is for get and rekey only")
	}

	// 2. Do it.
	if o.sub == "keygen" {
		pub, err := secrets.GenerateIdentity(o.out)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, pub)
		slog.Info("identity written: add its public key (printed on stdout) to SITE/secrets/recipients.txt, then run 'bellbuild secret rekey'", "file", o.out)
		return nil
	}
	store, err := secrets.Open(o.site)
	if err != nil {
		return err
	}
	switch o.sub {
	case "set":
		name := o.args[0]
		if err := secrets.ValidName(name); err != nil {
			return err
		}
		value, err := readSecretValue(ctx, name, o.from, stdin, stderr)
		if err != nil {
			return err
		}
		if o.trim {
			value = trimNewline(value)
		}
		if err := store.Set(name, value); err != nil {
			return err
		}
		slog.Info("secret stored", "name", name, "file", filepath.Join(store.Dir(), name+secrets.Ext), "bytes", len(value),
			"ends_with_newline", value[len(value)-1] == '\n') // kept as given: --trim-newline drops one
	case "get":
		id, err := loadIdentity(o.identities)
		if err != nil {
			return err
		}
		v, err := store.Get(o.args[0], id)
		if err != nil {
			return err
		}
		if _, err := stdout.Write(v.Reveal()); err != nil {
			return err
		}
	case "ls":
		entries, err := store.List()
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", e.Name, e.Size, e.ModTime.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	case "rm":
		if err := store.Remove(o.args[0]); err != nil {
			return err
		}
		slog.Info("secret removed", "name", o.args[0])
	case "rekey":
		id, err := loadIdentity(o.identities)
		if err != nil {
			return err
		}
		names, err := store.Rekey(id)
		if err != nil {
			return err
		}
		slog.Info("secrets rekeyed to the current recipients", "dir", store.Dir(), "secrets", len(names))
	}
	return nil
}

// loadIdentity loads the --identity files, else $BELLBUILD_AGE_IDENTITY's.
func loadIdentity(files []string) (*secrets.Identity, error) {
	if len(files) == 0 {
		if f := os.Getenv(secrets.IdentityEnv); f != "" {
			files = []string{f}
		}
	}
	return secrets.LoadIdentity(files...)
}

// readSecretValue reads a value from --from FILE or stdin (at most 1 MiB).
// From a terminal, echo is off while it is typed, and an interrupt (which
// does not end a read) turns it back on and gives up.
func readSecretValue(ctx context.Context, name, from string, stdin io.Reader, stderr io.Writer) ([]byte, error) {
	if from != "" {
		f, err := os.Open(from)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		v, err := secrets.ReadValue(f)
		if err != nil {
			return nil, fmt.Errorf("--from %s: %w", from, err)
		}
		return v, nil
	}
	f, ok := stdin.(*os.File)
	if !ok {
		return readStdin(stdin)
	}
	restore, err := echoOff(f)
	if err != nil { // not a terminal
		return readStdin(stdin)
	}
	defer restore()
	fmt.Fprintf(stderr, "value of %s (not echoed; end with Ctrl-D on a line of its own): ", name)
	defer fmt.Fprintln(stderr)
	type result struct {
		v   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := readStdin(stdin)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("stdin: interrupted: nothing stored")
	}
}

func readStdin(r io.Reader) ([]byte, error) {
	v, err := secrets.ReadValue(r)
	if err != nil {
		return nil, fmt.Errorf("stdin: %w", err)
	}
	return v, nil
}

// echoOff turns a terminal's echo off and returns what turns it back on;
// an error if f is not a terminal.
func echoOff(f *os.File) (restore func(), err error) {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	saved := *t
	t.Lflag &^= unix.ECHO
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, &saved) }, nil
}

// trimNewline drops one trailing "\n" or "\r\n".
func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSkipsAreHonest fails on a test that skips itself for a missing tool
// without going through testvm/testtool, which turns such a skip into a
// failure under BELLBUILD_REQUIRE_TOOLS=1 (CI). A direct t.Skip is allowed
// only for -short, whose message must say so.
func TestSkipsAreHonest(t *testing.T) {
	fset := token.NewFileSet()
	var bad []string
	seen := 0
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "pin", "testtool": // the TFTP fork is upstream's; testtool is the one place
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Skip" && sel.Sel.Name != "Skipf" && sel.Sel.Name != "SkipNow") {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name == "testtool" {
				return true
			}
			seen++
			msg := ""
			if len(call.Args) > 0 {
				if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					msg, _ = strconv.Unquote(lit.Value)
				}
			}
			if !strings.Contains(msg, "-short") {
				bad = append(bad, fset.Position(call.Pos()).String()+": skips without testtool.Skipf (a missing tool must fail under BELLBUILD_REQUIRE_TOOLS=1)")
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Fatal("found no -short skip at all: the walk is looking in the wrong place")
	}
	for _, b := range bad {
		t.Error(b)
	}
}

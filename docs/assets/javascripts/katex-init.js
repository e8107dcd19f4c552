// Render math with the local KaTeX copy on every page (and again after instant navigation).
// Markdown pages carry math as \( \) and \[ \] (pymdownx.arithmatex); notebook cells as $ and $$.
document$.subscribe(({ body }) => {
  const tex = [
    { left: "\\[", right: "\\]", display: true },
    { left: "\\(", right: "\\)", display: false },
  ];
  const dollars = [
    { left: "$$", right: "$$", display: true },
    { left: "$", right: "$", display: false },
  ];
  renderMathInElement(body, { delimiters: tex, throwOnError: false });
  body.querySelectorAll(".jupyter-wrapper .jp-MarkdownOutput").forEach((cell) =>
    renderMathInElement(cell, { delimiters: [...dollars, ...tex], throwOnError: false })
  );
});

/* Typeset the page's maths with the site's own KaTeX (site/_ext/attn_site.py). Sphinx has
   already wrapped every formula in an element of class "math" with \( \) or \[ \] delimiters
   (amsmath environments come bare); KaTeX renders each one in place. A formula KaTeX cannot
   parse is left as its source in red (throwOnError: false) rather than breaking the page. */
(function () {
  "use strict";
  var options = {
    delimiters: [
      {left: "\\[", right: "\\]", display: true},
      {left: "$$", right: "$$", display: true},
      {left: "\\begin{equation}", right: "\\end{equation}", display: true},
      {left: "\\begin{equation*}", right: "\\end{equation*}", display: true},
      {left: "\\begin{align}", right: "\\end{align}", display: true},
      {left: "\\begin{align*}", right: "\\end{align*}", display: true},
      {left: "\\begin{gather}", right: "\\end{gather}", display: true},
      {left: "\\begin{gather*}", right: "\\end{gather*}", display: true},
      {left: "\\begin{multline}", right: "\\end{multline}", display: true},
      {left: "\\begin{multline*}", right: "\\end{multline*}", display: true},
      {left: "\\(", right: "\\)", display: false}
    ],
    throwOnError: false, strict: "ignore", trust: false, maxSize: 20, maxExpand: 1000
  };
  function typeset() {
    var parts = document.querySelectorAll(".math");
    for (var i = 0; i < parts.length; i++) {
      try { window.renderMathInElement(parts[i], options); } catch (e) { /* leave its source */ }
    }
    document.documentElement.setAttribute("data-attn-math", "done");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", typeset);
  else typeset();
})();

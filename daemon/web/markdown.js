// A small Markdown renderer for model answers. Every piece of text is HTML-escaped before
// any markup is added, and links keep only http(s) and mailto targets, so nothing a model
// writes can become a script. Covers: fenced and indented code, headings, lists, quotes,
// tables, rules, paragraphs; inline code, bold, italic, strike-through and links. Markup is
// built once: a finished code span or link is stashed behind a placeholder, so no later
// pattern ever runs over HTML the renderer made (an href value stays the URL, byte for byte).
"use strict";
(function (global) {
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESC[c]);
  }

  function safeUrl(url) {
    const u = url.trim();
    return /^(https?:\/\/|mailto:)/i.test(u) ? u : null;
  }

  const ENTITY = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" };
  function unescapeHtml(text) {
    return text.replace(/&(amp|lt|gt|quot|#39);/g, (e) => ENTITY[e]);
  }

  // Emphasis, strong and strike-through on escaped text. The text it sees holds no markup of
  // ours but placeholders (NUL, number, NUL): finished code spans and links are stashed before
  // this pass, so it never sees (and never rewrites) an attribute value.
  function emphasis(text) {
    text = text.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    text = text.replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>");
    text = text.replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?!\w)/g, "$1<em>$2</em>");
    text = text.replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?!\w)/g, "$1<em>$2</em>");
    return text.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  }

  // Inline markup on raw text. Each finished piece of HTML (a code span, a link) is stashed
  // behind a placeholder as soon as it is built, so no later pass runs over it; the
  // placeholders are put back last. `breaks` turns the text's newlines into <br> (before the
  // stash is put back, so that pass too sees no generated HTML).
  function inline(raw, breaks) {
    const stash = [];
    const hold = (html) => { stash.push(html); return "\u0000" + (stash.length - 1) + "\u0000"; };
    // NUL is the placeholder's delimiter: a NUL in the text itself must not read as one.
    let text = String(raw).replace(/\u0000/g, "\uFFFD");
    // Code spans first: nothing inside them is parsed (a line end in one is a space).
    text = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) =>
      hold("<code>" + escapeHtml(code.trim().replace(/\n/g, " ")) + "</code>"));
    text = escapeHtml(text);
    text = text.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (m, label, href) => {
      // A code span inside the target wins over the link (as in CommonMark): plain text.
      if (href.includes("\u0000")) return m;
      // The target was escaped with the rest: check the URL itself, escape it once for the
      // attribute. The label (escaped, maybe holding code placeholders) gets its emphasis now.
      const url = safeUrl(unescapeHtml(href));
      if (!url) return m;
      const shown = breaks ? emphasis(label).replace(/\n/g, "<br>") : emphasis(label);
      return hold('<a href="' + escapeHtml(url) + '" target="_blank" rel="noopener noreferrer">' + shown + "</a>");
    });
    text = emphasis(text);
    if (breaks) text = text.replace(/\n/g, "<br>");
    // Put the stash back; a link's label may hold code placeholders, stashed earlier.
    const restore = (s) => s.replace(/\u0000(\d+)\u0000/g, (_, i) => restore(stash[Number(i)]));
    return restore(text);
  }

  function isTableRule(line) {
    return /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(line);
  }
  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function render(source) {
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)/);
      if (fence) {
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++; // the closing fence (or the end: a fence still streaming renders as code)
        const lang = fence[2] ? ' class="language-' + escapeHtml(fence[2]) + '"' : "";
        out.push("<pre><code" + lang + ">" + escapeHtml(body.join("\n")) + "</code></pre>");
        continue;
      }
      if (/^\s*$/.test(line)) { i++; continue; }
      const heading = line.match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
      if (heading) {
        const n = heading[1].length;
        out.push("<h" + n + ">" + inline(heading[2]) + "</h" + n + ">");
        i++;
        continue;
      }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { out.push("<hr>"); i++; continue; }
      if (/^ {4}|\t/.test(line)) {
        const body = [];
        while (i < lines.length && (/^ {4}|\t/.test(lines[i]) || /^\s*$/.test(lines[i]))) {
          body.push(lines[i++].replace(/^ {4}|\t/, ""));
        }
        out.push("<pre><code>" + escapeHtml(body.join("\n").replace(/\n+$/, "")) + "</code></pre>");
        continue;
      }
      if (/^\s*>/.test(line)) {
        const body = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
        out.push("<blockquote>" + render(body.join("\n")) + "</blockquote>");
        continue;
      }
      const item = line.match(/^(\s*)([-*+]|\d+[.)])\s+/);
      if (item) {
        const ordered = /\d/.test(item[2]);
        const tag = ordered ? "ol" : "ul";
        const items = [];
        while (i < lines.length) {
          const m = lines[i].match(/^(\s*)([-*+]|\d+[.)])\s+(.*)$/);
          if (m && /\d/.test(m[2]) === ordered) { items.push(m[3]); i++; continue; }
          if (items.length && /^\s{2,}\S/.test(lines[i])) { items[items.length - 1] += "\n" + lines[i].trim(); i++; continue; }
          break;
        }
        const start = ordered && parseInt(item[2], 10) !== 1 ? ' start="' + parseInt(item[2], 10) + '"' : "";
        out.push("<" + tag + start + ">" + items.map((t) => "<li>" + inline(t, true) + "</li>").join("") + "</" + tag + ">");
        continue;
      }
      if (line.includes("|") && i + 1 < lines.length && isTableRule(lines[i + 1])) {
        const head = cells(line);
        i += 2;
        const rows = [];
        while (i < lines.length && lines[i].includes("|") && !/^\s*$/.test(lines[i])) rows.push(cells(lines[i++]));
        out.push("<table><thead><tr>" + head.map((c) => "<th>" + inline(c) + "</th>").join("") +
          "</tr></thead><tbody>" + rows.map((r) => "<tr>" + r.map((c) => "<td>" + inline(c) + "</td>").join("") + "</tr>").join("") +
          "</tbody></table>");
        continue;
      }
      const para = [];
      while (i < lines.length && !/^\s*$/.test(lines[i]) && !/^\s*(```|~~~|#{1,6}\s|>|([-*+]|\d+[.)])\s)/.test(lines[i])) {
        para.push(lines[i++]);
      }
      if (!para.length) para.push(lines[i++]);
      out.push("<p>" + inline(para.join("\n"), true) + "</p>");
    }
    return out.join("\n");
  }

  global.EdgedMarkdown = { render, escapeHtml };
})(window);

(function () {
  var D = JSON.parse(document.getElementById('rag-data').textContent);
  var R = D.docScores.length, ND = D.documents.length;
  var pinned = {rows: allRows(), label: 'whole answer', key: 'all'}, mode = 'sentence';
  function allRows() { var r = []; for (var i = 0; i < R; i++) r.push(i); return r; }
  function color(v) {
    if (v === null || !isFinite(v)) v = 0;
    var k = Math.round((Math.max(-1, Math.min(1, v)) + 1) * D.levels);
    return [D.palette[k], D.dark[k]];
  }
  function fmt(v) {
    if (v === null || !isFinite(v)) return 'nan';
    var a = Math.abs(v), s = (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
    return (v >= 0 ? '+' : '') + s;
  }
  function sumRows(matrix, rows) {
    var out = matrix[rows[0]].map(function () { return 0; });
    rows.forEach(function (r) { matrix[r].forEach(function (v, i) { out[i] += (v === null ? 0 : v); }); });
    return out;
  }
  function peak(lists) {
    var p = 0;
    lists.forEach(function (l) { l.forEach(function (v) { p = Math.max(p, Math.abs(v)); }); });
    return p > 0 ? p : 1;
  }
  function shade(el, v, p, title) {
    var c = color(v / p);
    el.style.backgroundColor = c[0];
    el.style.color = c[1] ? '#fff' : '';
    el.title = title;
  }
  var sents = document.querySelectorAll('.sent'), toks = document.querySelectorAll('.doc-text .tok');
  function show(sel) {
    var rows = sel.rows;
    var docs = sumRows(D.docScores, rows);
    var order = docs.map(function (v, i) { return i; }).sort(function (a, b) { return docs[b] - docs[a]; });
    var top = Math.max.apply(null, docs.map(Math.abs)) || 1;
    order.forEach(function (d, k) {
      var card = document.getElementById('doc-' + d);
      card.querySelector('.rank').textContent = '#' + (k + 1);
      card.classList.toggle('top', k === 0 && docs[d] > 0);
      card.querySelector('.score').textContent = fmt(docs[d]);
      var bar = card.querySelector('.meter span'), w = 50 * Math.abs(docs[d]) / top;
      bar.style.left = (docs[d] >= 0 ? 50 : 50 - w) + '%';
      bar.style.width = w + '%';
      bar.style.background = color(docs[d] >= 0 ? 0.85 : -0.85)[0];
    });
    var sent = D.sentScores.map(function (m) { return sumRows(m, rows); });
    var heads = sumRows(D.headScores, rows);
    var sp = peak(sent.concat([heads]));
    document.querySelectorAll('.dochead').forEach(function (el) {
      var v = heads[+el.dataset.d];
      shade(el, v, sp, 'header score ' + fmt(v) + ' (its label and the gaps between its sentences)');
    });
    sents.forEach(function (el) {
      var v = sent[+el.dataset.d][+el.dataset.s];
      el.classList.toggle('cited', D.citedSentences[sel.key] !== undefined &&
                          D.citedSentences[sel.key].indexOf(el.dataset.d + ':' + el.dataset.s) >= 0);
      if (mode === 'sentence') shade(el, v, sp, 'sentence score ' + fmt(v));
      else { el.style.backgroundColor = ''; el.style.color = ''; el.title = 'sentence score ' + fmt(v); }
    });
    if (mode === 'token') {
      var tok = D.tokScores.map(function (m) { return m.length ? sumRows(m, rows) : []; });
      var tp = peak(tok);
      toks.forEach(function (el) {
        var v = tok[+el.dataset.d][+el.dataset.k];
        shade(el, v, tp, 'token score ' + fmt(v));
      });
    } else {
      toks.forEach(function (el) { el.style.backgroundColor = ''; el.style.color = ''; el.title = ''; });
    }
    document.querySelectorAll('.row').forEach(function (el) {
      el.classList.toggle('sel', rows.indexOf(+el.dataset.r) >= 0 && sel.key !== 'all');
    });
    document.querySelectorAll('button[data-key]').forEach(function (b) { b.classList.toggle('sel', b.dataset.key === sel.key); });
    document.querySelectorAll('tr[data-key]').forEach(function (tr) { tr.classList.toggle('sel', tr.dataset.key === sel.key); });
    var total = docs.reduce(function (a, b) { return a + b; }, 0);
    var other = rows.reduce(function (a, r) { return a + (D.otherScores[r] || 0); }, 0);
    document.getElementById('status').innerHTML = 'showing <b>' + esc(sel.label) + '</b> · documents ' + fmt(total) +
      (D.restHeld ? '' : ' · outside the documents ' + fmt(other)) + (sel === pinned ? '' : ' · <i>preview</i>');
  }
  function esc(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
  function pick(el) {
    var key = el.dataset.key;
    if (key === 'all') return {rows: allRows(), label: 'whole answer', key: 'all'};
    if (key.charAt(0) === 's') {
      var s = +key.slice(1);
      return {rows: D.sentenceRows[s], label: 'answer sentence ' + (s + 1), key: key};
    }
    var r = +key.slice(1);
    return {rows: [r], label: '\u201c' + D.rows[r].label + '\u201d', key: key};
  }
  document.querySelectorAll('[data-key]').forEach(function (el) {
    el.addEventListener('mouseenter', function () { show(pick(el)); });
    el.addEventListener('mouseleave', function () { show(pinned); });
    el.addEventListener('click', function () { pinned = pick(el); show(pinned); });
    el.addEventListener('keydown', function (ev) {
      if (ev.key === 'Enter' || ev.key === ' ') { pinned = pick(el); show(pinned); ev.preventDefault(); }
    });
  });
  document.querySelectorAll('input[name=shade]').forEach(function (el) {
    el.addEventListener('change', function () { mode = el.value; show(pinned); });
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
    var cur = pinned.key.charAt(0) === 'r' ? +pinned.key.slice(1) : -1;
    var next = ev.key === 'ArrowRight' ? cur + 1 : cur - 1;
    if (next < 0 || next >= R) return;
    pinned = pick({dataset: {key: 'r' + next}});
    show(pinned);
    ev.preventDefault();
  });
  show(pinned);
})();

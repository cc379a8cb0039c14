(function () {
  var D = JSON.parse(document.getElementById('llm-attrib-data').textContent);
  function rgb(v) {
    if (!isFinite(v)) v = 0;
    v = Math.max(-1, Math.min(1, v));
    var e = v > 0 ? [178, 24, 43] : [33, 102, 172], a = Math.abs(v);
    return 'rgb(' + e.map(function (c) { return Math.round(255 + (c - 255) * a); }).join(',') + ')';
  }
  function fmt(v) {
    if (v === null || !isFinite(v)) return 'nan';
    var a = Math.abs(v), s = (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
    return (v >= 0 ? '+' : '') + s;
  }
  function esc(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
  function tok(s) { return esc(s).replace(/([\u2423\u21b5\u2192\u240d\u2205])/g, '<span class="ws">$1</span>'); }
  var toks = document.querySelectorAll('#text .tok');
  var chips = document.querySelectorAll('.tgt');
  var rows = document.querySelectorAll('.matrix tbody tr');
  var T = D.targets.length;
  function select(t) {
    if (t < 0 || t >= T) return;
    D.sel = t;
    var norm = D.norm[t];
    toks.forEach(function (el) {
      var j = +el.dataset.j;
      el.classList.remove('focus', 'later');
      if (D.lm && j >= D.nPrompt + t) {
        el.style.background = ''; el.style.color = '';
        el.classList.add(j === D.nPrompt + t ? 'focus' : 'later');
        return;
      }
      var v = norm[j];
      el.style.background = rgb(v);
      el.style.color = Math.abs(v) > 0.55 ? '#fff' : '';
      el.title = D.inputs[j] + '  ' + fmt(D.raw[t][j]);
    });
    var last = document.getElementById('last-target');
    if (last) last.classList.toggle('focus', D.lm && t === T - 1);
    chips.forEach(function (c) { c.classList.toggle('sel', +c.dataset.t === t); });
    rows.forEach(function (r) { r.classList.toggle('sel', +r.dataset.t === t); });
    var tg = D.targets[t];
    document.getElementById('sel-token').innerHTML = tok(tg.token);
    document.getElementById('sel-prob').textContent = tg.prob;
    document.getElementById('sel-err').textContent = tg.err;
    var limit = D.lm ? Math.min(D.nPrompt + t, D.inputs.length) : D.inputs.length;
    var idx = [];
    for (var j = 0; j < limit; j++) if (isFinite(D.raw[t][j])) idx.push(j);
    idx.sort(function (a, b) { return D.raw[t][b] - D.raw[t][a]; });
    var html = '';
    idx.slice(0, D.topK).forEach(function (j) {
      html += '<tr><td>' + tok(D.inputs[j]) + ' <span class="ws">#' + j + '</span></td><td class="num" style="background:' + rgb(norm[j]) +
              (Math.abs(norm[j]) > 0.55 ? ';color:#fff' : '') + '">' + fmt(D.raw[t][j]) + '</td></tr>';
    });
    document.getElementById('sel-top').innerHTML = html;
    if (D.heads) {
      var H = D.heads[t], peak = 1e-12, out = '';
      H.forEach(function (row) { row.forEach(function (v) { peak = Math.max(peak, Math.abs(v)); }); });
      H.forEach(function (row, l) {
        out += '<tr><td class="lab">L' + l + '</td>';
        row.forEach(function (v, h) {
          out += '<td class="hc" style="background:' + rgb(v / peak) + '" title="layer ' + l + ' head ' + h + ': ' + fmt(v) + '"></td>';
        });
        out += '</tr>';
      });
      document.getElementById('sel-heads').innerHTML = out;
    }
  }
  chips.forEach(function (c) { c.addEventListener('click', function () { select(+c.dataset.t); }); });
  rows.forEach(function (r) { r.addEventListener('click', function () { select(+r.dataset.t); }); });
  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowRight') { select(D.sel + 1); ev.preventDefault(); }
    if (ev.key === 'ArrowUp' || ev.key === 'ArrowLeft') { select(D.sel - 1); ev.preventDefault(); }
  });
  var heads = document.querySelectorAll('.matrix thead th.col');
  document.querySelectorAll('.matrix td.cell').forEach(function (c) {
    c.addEventListener('mouseenter', function () { heads[+c.dataset.j].classList.add('hot'); });
    c.addEventListener('mouseleave', function () { heads[+c.dataset.j].classList.remove('hot'); });
  });
  select(D.sel);
})();

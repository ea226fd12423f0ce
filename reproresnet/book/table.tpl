{# pandas' HTML table (html_table.tpl) with the book's id on the table, its header cells also
   carrying the classes `render.html` gives their columns (`num`: right-aligned by
   _static/tables.css), in a container that scrolls sideways. #}
{% extends "html_table.tpl" %}
{% block before_table %}<div class="table-scroll">{% endblock before_table %}
{% block table %}<table id="{{ table_id }}" {{ table_attributes }}>
{{ self.thead() }}
{{ self.tbody() }}
</table>{% endblock table %}
{% block head_tr scoped %}
<tr>
{% for c in r %}{% if c.is_visible != False %}
<{{c.type}} class="{{c.class}}{{ header_classes.get(c.class.split()[-1], '') }}">{{c.display_value}}</{{c.type}}>
{% endif %}{% endfor %}
</tr>
{% endblock head_tr %}
{% block after_table %}</div>{% endblock after_table %}
